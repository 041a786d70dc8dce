"""Methods marked by a decorator (``@job``, ``@worker_ready``), found once per class."""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any

from .exceptions import ConfigurationError

# Per class, not per instance: a server makes a worker (its proxy) per connection.
_CACHE: weakref.WeakKeyDictionary[type, dict[str, dict[Hashable, tuple[str, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def marked_methods(cls: type, marker: str, what: str) -> dict[Hashable, tuple[str, Any]]:
    """``{key: (method name, mark)}`` of the methods of ``cls`` (and its bases, the nearest
    definition winning) carrying the attribute ``marker``, keyed by the mark's key (the mark
    itself, or its first item when it is a tuple).

    Raises:
        ConfigurationError: two methods carry the same key (``what`` names the decorator).
    """
    per_marker = _CACHE.get(cls)
    if per_marker is None:
        per_marker = _CACHE[cls] = {}
    found = per_marker.get(marker)
    if found is not None:
        return found
    found = {}
    seen: set[str] = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            mark = getattr(value, marker, None)
            if mark is None:
                continue
            key = mark[0] if isinstance(mark, tuple) else mark
            if key in found:
                raise ConfigurationError(
                    f"{cls.__name__} has two {what} handlers for {key!r}:"
                    f" {attr} and {found[key][0]}"
                )
            found[key] = (attr, mark)
    per_marker[marker] = found
    return found
