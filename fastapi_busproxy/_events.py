"""Named events with handlers registered by decorator (``@worker.event_handler("on_x")``)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from ._tasks import TaskSet
from .exceptions import UnknownEventError

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])


class EventEmitter:
    """Mix-in: a class declares the events it emits in ``EVENTS``; subclasses add their own.

    Handlers are called as ``handler(obj, *args)``, sync or async, in registration order. A
    handler that raises is logged and the others still run. Each handler runs in a task of its
    own (as the reference runs them), so a handler may wait on anything, including messages to
    the object that fired it; events named in ``INLINE_EVENTS`` are awaited where they fire.
    :meth:`_settle_event_handlers` lets running handlers finish, then cancels the rest.
    """

    EVENTS: ClassVar[tuple[str, ...]] = ()
    INLINE_EVENTS: ClassVar[tuple[str, ...]] = ()
    _all_events: ClassVar[frozenset[str]] = frozenset()
    _inline_events: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        events: set[str] = set()
        inline: set[str] = set()
        for base in reversed(cls.__mro__):
            events.update(base.__dict__.get("EVENTS", ()))
            inline.update(base.__dict__.get("INLINE_EVENTS", ()))
        cls._all_events = frozenset(events)
        cls._inline_events = frozenset(inline)

    def __init__(self) -> None:
        self._event_handlers: dict[str, list[Callable[..., Any]]] = {}
        self._event_tasks: TaskSet | None = None

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

    def remove_event_handler(self, event_name: str, handler: Callable[..., Any]) -> None:
        """Remove a handler added for ``event_name`` (nothing happens if it is not there)."""
        handlers = self._event_handlers.get(event_name)
        if handlers and handler in handlers:
            handlers.remove(handler)

    def has_event_handlers(self, event_name: str) -> bool:
        return bool(self._event_handlers.get(event_name))

    async def _call_event_handler(self, event_name: str, *args: Any) -> None:
        handlers = self._event_handlers.get(event_name)
        if not handlers:
            return
        if event_name in self._inline_events:
            for handler in list(handlers):
                await self._run_event_handler(event_name, handler, args)
            return
        if self._event_tasks is None:
            self._event_tasks = TaskSet(f"{getattr(self, 'name', type(self).__name__)}:events")
        for handler in list(handlers):
            self._event_tasks.spawn(
                self._run_event_handler(event_name, handler, args), name=event_name
            )

    async def _run_event_handler(
        self, event_name: str, handler: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
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

    def _event_handler_tasks(self) -> set[asyncio.Task[Any]]:
        return set(self._event_tasks._tasks) if self._event_tasks is not None else set()

    async def _settle_event_handlers(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for running handlers, then cancel what is left."""
        tasks = self._event_handler_tasks() - {asyncio.current_task()}
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        if self._event_tasks is not None:
            await self._event_tasks.cancel_all()
