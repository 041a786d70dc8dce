"""What a subscriber wants from the bus, and the index that finds who wants a message.

A subscriber states an :class:`Interest`: messages targeted at given names, broadcasts
(messages without a target), messages from given sources, messages of given types, or
everything. The bus keeps an :class:`InterestIndex` and looks up the recipients of a message by
its target, source and type, so the cost of a send does not grow with the number of
subscribers that do not want it.

Both are pure: no I/O, no asyncio.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .messages import BusMessage

__all__ = ["Interest", "InterestIndex"]

_S = TypeVar("_S", bound=Hashable)
_K = TypeVar("_K")


@dataclass(frozen=True)
class Interest:
    """The messages a subscriber receives: the union of what each field selects.

    Attributes:
        targets: messages whose ``target`` is one of these names.
        broadcasts: messages whose ``target`` is ``None``.
        sources: messages whose ``source`` is one of these names, whatever their target.
        types: messages that are instances of one of these classes, whatever their target.
        everything: every message (a monitor or a logger).
    """

    targets: frozenset[str] = field(default_factory=frozenset)
    broadcasts: bool = False
    sources: frozenset[str] = field(default_factory=frozenset)
    types: tuple[type[BusMessage], ...] = ()
    everything: bool = False

    @classmethod
    def worker(cls, name: str) -> Interest:
        """What a worker gets by default: messages targeted at ``name``, and broadcasts."""
        return cls(targets=frozenset((name,)), broadcasts=True)

    def union(self, other: Interest) -> Interest:
        """An interest that selects what either selects."""
        return Interest(
            targets=self.targets | other.targets,
            broadcasts=self.broadcasts or other.broadcasts,
            sources=self.sources | other.sources,
            types=tuple(dict.fromkeys(self.types + other.types)),
            everything=self.everything or other.everything,
        )

    def matches(self, message: BusMessage) -> bool:
        """Return ``True`` if this interest selects ``message``."""
        if self.everything:
            return True
        target = message.target
        if target is None:
            if self.broadcasts:
                return True
        elif target in self.targets:
            return True
        if message.source in self.sources:
            return True
        return bool(self.types) and isinstance(message, self.types)


class InterestIndex(Generic[_S]):
    """Subscribers indexed by what they want; :meth:`recipients` is a few dict look-ups.

    Subscribers are kept in insertion order (dicts as ordered sets), so recipients come out in
    the order they subscribed.
    """

    def __init__(self) -> None:
        self._interests: dict[_S, Interest] = {}
        # Subscription order, to merge the groups of a message in that order.
        self._order: dict[_S, int] = {}
        self._counter = itertools.count()
        self._by_target: dict[str, dict[_S, None]] = {}
        self._by_source: dict[str, dict[_S, None]] = {}
        self._by_type: dict[type[BusMessage], dict[_S, None]] = {}
        self._broadcast: dict[_S, None] = {}
        self._everything: dict[_S, None] = {}
        # Concrete message class -> subscribers selecting it by type (walks the MRO once).
        self._type_cache: dict[type[BusMessage], tuple[_S, ...]] = {}

    def __len__(self) -> int:
        return len(self._interests)

    def __contains__(self, subscriber: object) -> bool:
        return subscriber in self._interests

    def interest_of(self, subscriber: _S) -> Interest | None:
        return self._interests.get(subscriber)

    def subscribers(self) -> list[_S]:
        return list(self._interests)

    def targets(self) -> set[str]:
        """Every name some subscriber receives as a target."""
        return set(self._by_target)

    def wants_target(self, name: str) -> bool:
        """Whether some subscriber receives messages targeted at ``name`` by name."""
        return name in self._by_target

    def sources(self) -> set[str]:
        return set(self._by_source)

    def types(self) -> set[type[BusMessage]]:
        return set(self._by_type)

    def wants_broadcasts(self) -> bool:
        return bool(self._broadcast) or bool(self._everything)

    def wants_everything(self) -> bool:
        return bool(self._everything)

    def add(self, subscriber: _S, interest: Interest) -> None:
        """Index ``subscriber``; adding it again replaces its interest."""
        if subscriber in self._interests:
            self.remove(subscriber)
        self._interests[subscriber] = interest
        self._order[subscriber] = next(self._counter)
        for name in interest.targets:
            self._by_target.setdefault(name, {})[subscriber] = None
        for name in interest.sources:
            self._by_source.setdefault(name, {})[subscriber] = None
        for cls in interest.types:
            self._by_type.setdefault(cls, {})[subscriber] = None
        if interest.broadcasts:
            self._broadcast[subscriber] = None
        if interest.everything:
            self._everything[subscriber] = None
        if interest.types:
            self._type_cache.clear()

    def remove(self, subscriber: _S) -> None:
        """Forget ``subscriber``; unknown subscribers are ignored."""
        interest = self._interests.pop(subscriber, None)
        if interest is None:
            return
        del self._order[subscriber]
        _discard_all(self._by_target, interest.targets, subscriber)
        _discard_all(self._by_source, interest.sources, subscriber)
        _discard_all(self._by_type, interest.types, subscriber)
        self._broadcast.pop(subscriber, None)
        self._everything.pop(subscriber, None)
        if interest.types:
            self._type_cache.clear()

    def recipients(self, message: BusMessage) -> list[_S]:
        """The subscribers that want ``message``, each once."""
        target = message.target
        if target is None:
            first: Iterable[_S] = self._broadcast
        else:
            first = self._by_target.get(target, ())
        groups: list[Iterable[_S]] = []
        if first:
            groups.append(first)
        by_source = self._by_source.get(message.source) if self._by_source else None
        if by_source:
            groups.append(by_source)
        if self._by_type:
            by_type = self._type_cache.get(type(message))
            if by_type is None:
                by_type = self._subscribers_of_type(type(message))
            if by_type:
                groups.append(by_type)
        if self._everything:
            groups.append(self._everything)
        if not groups:
            return []
        if len(groups) == 1:
            return list(groups[0])
        seen: dict[_S, None] = {}
        for group in groups:
            for subscriber in group:
                seen[subscriber] = None
        return sorted(seen, key=self._order.__getitem__)

    def _subscribers_of_type(self, cls: type[BusMessage]) -> tuple[_S, ...]:
        found: dict[_S, None] = {}
        for base in cls.__mro__:
            group = self._by_type.get(base)
            if group:
                found.update(group)
        result = tuple(sorted(found, key=self._order.__getitem__))
        self._type_cache[cls] = result
        return result


def _discard_all(index: dict[_K, dict[_S, None]], keys: Iterable[_K], subscriber: _S) -> None:
    for key in keys:
        group = index.get(key)
        if group is not None:
            group.pop(subscriber, None)
            if not group:
                del index[key]
