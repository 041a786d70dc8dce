"""Named events with handlers registered by decorator (``@worker.event_handler("on_x")``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .exceptions import UnknownEventError

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


class EventEmitter:
    """Mix-in: a class declares the events it emits in ``EVENTS``; subclasses add their own.

    Handlers are called as ``handler(obj, *args)``, sync or async, in registration order. A
    handler that raises is logged and the others still run.
    """

    EVENTS: ClassVar[tuple[str, ...]] = ()
    _all_events: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        events: set[str] = set()
        for base in reversed(cls.__mro__):
            events.update(base.__dict__.get("EVENTS", ()))
        cls._all_events = frozenset(events)

    def __init__(self) -> None:
        self._event_handlers: dict[str, list[Callable[..., Any]]] = {}

    @property
    def event_names(self) -> frozenset[str]:
        """The events this object emits."""
        return self._all_events

    def event_handler(self, event_name: str) -> Callable[[_F], _F]:
        """Decorator: call the decorated function when ``event_name`` fires.

        Raises:
            UnknownEventError: the object does not emit ``event_name``.
        """

        def decorator(handler: _F) -> _F:
            self.add_event_handler(event_name, handler)
            return handler

        return decorator

    def add_event_handler(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Call ``handler(self, *args)`` when ``event_name`` fires.

        Raises:
            UnknownEventError: the object does not emit ``event_name``.
        """
        if event_name not in self._all_events:
            known = ", ".join(sorted(self._all_events))
            raise UnknownEventError(
                f"{type(self).__name__} has no event {event_name!r}; its events are: {known}"
            )
        self._event_handlers.setdefault(event_name, []).append(handler)

    def has_event_handlers(self, event_name: str) -> bool:
        return bool(self._event_handlers.get(event_name))

    async def _call_event_handler(self, event_name: str, *args: Any) -> None:
        for handler in self._event_handlers.get(event_name, ()):
            try:
                result = handler(self, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "%s handler %s of %r raised",
                    event_name,
                    getattr(handler, "__qualname__", handler),
                    getattr(self, "name", self),
                )
