"""The worker bus: subscribers, bounded per-subscriber queues, routing by interest.

A subscriber registers a handler with an :class:`~fastapi_busproxy.interest.Interest`. The bus
finds the recipients of each message in an index (by target, source and type) and puts the
message in each recipient's bounded queue; one delivery task per subscriber, owned by the bus,
calls the handler with one message at a time.

Per subscriber:

- the data messages of each sender are delivered in the order they were sent (FIFO), and the
  senders take turns (round-robin, a few messages a turn): a sender that floods a subscriber
  does not delay the others' messages behind all of its own;
- system messages (:class:`~fastapi_busproxy.messages.BusSystemMessage`) overtake the data
  messages already queued;
- a handler that raises is logged and counted, and delivery goes on with the next message.

Queues are bounded (``capacity`` data messages, shared by the senders' lanes, and
``system_capacity`` system messages). When a recipient's queue is full, the sender's
:class:`~fastapi_busproxy.messages.Overflow` policy applies: ``WAIT`` (the default: ``send()``
waits for room, up to ``timeout``, then raises
:class:`~fastapi_busproxy.exceptions.BusFullError`; the room freed goes to the waiting
senders in turn, a burst each: see :mod:`fastapi_busproxy._mailbox`) or ``DROP`` (the message
is not queued for that recipient; the drop is counted on the subscription and logged). System
messages always wait. Recipients with room get the message at once; only full ones make the
sender wait.

A subscriber may also give a *direct* handler: the sender's task calls it when that
subscriber has nothing queued and is not handling a message, and when it returns ``True`` the
message skips the queue. Proxies use it to write to an idle WebSocket at once, without the
hand-over to their delivery task (a turn of the event loop per message, in each direction).
Order is kept: a message goes direct only when nothing sent to the subscriber before it is
still waiting.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._mailbox import Mailbox
from ._tasks import cancel_and_wait
from .exceptions import BusClosedError, BusFullError, ConfigurationError
from .interest import Interest, InterestIndex
from .messages import BusMessage, Overflow

if TYPE_CHECKING:
    from .registry import WorkerRegistry

__all__ = [
    "AsyncQueueBus",
    "DEFAULT_CAPACITY",
    "DEFAULT_SYSTEM_CAPACITY",
    "DirectHandler",
    "InMemoryBus",
    "MessageHandler",
    "Subscription",
    "WorkerBus",
]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[BusMessage], Awaitable[None]]

DirectHandler = Callable[[BusMessage], Awaitable[bool]]
"""Handles a message in the sender's task; ``False``: queue it as usual instead."""

DEFAULT_CAPACITY = 1000
"""Data messages a subscriber's queue holds before the overflow policy applies."""

DEFAULT_SYSTEM_CAPACITY = 100
"""System messages a subscriber's queue holds before senders wait."""

_DROP_LOG_EVERY = 1000

_timing = False  # see time_queues


def time_queues(on: bool = True) -> None:
    """Measure how long messages wait in every subscriber's queue, from their send to their
    handler (:attr:`Subscription.wait_seconds`), from now on, in this process; the metrics
    turn it on. Off (the default), it costs a flag check per message."""
    global _timing
    _timing = on


class Subscription:
    """A subscriber's place on the bus: its interest, queue, delivery task and counters.

    Attributes:
        name: the subscriber's name (used in log lines).
        interest: what it receives.
        delivered: messages handed to the handler.
        dropped: messages not queued because the queue was full and the policy was ``DROP``.
        errors: messages whose handler raised.
    """

    __slots__ = (
        "_direct",
        "_drain_at",
        "_drained",
        "_handled",
        "_handler",
        "_handling",
        "_in_direct",
        "_taken",
        "_task",
        "delivered",
        "dropped",
        "errors",
        "interest",
        "mailbox",
        "name",
        "wait_seconds",
        "waited",
    )

    def __init__(
        self,
        name: str,
        handler: MessageHandler,
        interest: Interest,
        mailbox: Mailbox[BusMessage],
        direct: DirectHandler | None = None,
    ) -> None:
        self.name = name
        self.interest = interest
        self.mailbox = mailbox
        self._handler = handler
        self._direct = direct
        self._handling = False  # the delivery task has a message in hand
        self._in_direct = False  # a sender is in the direct handler
        self._task: asyncio.Task[None] | None = None
        self._handled = 0  # messages the delivery task has finished with
        # Taken by the handler running now (take_queued) with a receipt: finished with
        # when the handler returns.
        self._taken: list[BusMessage] | None = None
        self._drain_at: int | None = None
        self._drained: Callable[[], Awaitable[None]] | None = None
        self.delivered = 0
        self.dropped = 0
        self.errors = 0
        # While queues are timed (time_queues): seconds the handled messages waited in all,
        # from their send to their handler, and how many were timed.
        self.wait_seconds = 0.0
        self.waited = 0

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} queued={len(self.mailbox)} dropped={self.dropped}>"

    @property
    def closed(self) -> bool:
        return self.mailbox.closed

    @property
    def queued(self) -> int:
        """Messages waiting in the queue."""
        return len(self.mailbox)

    async def _run(self) -> None:
        mailbox = self.mailbox
        handler = self._handler
        while True:
            try:
                message = await mailbox.get()
            except BusClosedError:
                return
            if _timing:
                self._timed(message)
            self._handling = True
            try:
                await handler(message)
            except asyncio.CancelledError:
                raise  # not finished: its receipt (and those it took) are kept
            except Exception:
                self._failed(message)
                if message.receipt is not None:
                    message.receipt.release()
                if self._taken is not None:
                    self._release_taken()
            else:
                self.delivered += 1
                if message.receipt is not None:
                    message.receipt.release()
                if self._taken is not None:
                    self._release_taken()
            finally:
                self._handling = False
                self._handled += 1
            if self._drain_at is not None and self._handled >= self._drain_at:
                drained, self._drained, self._drain_at = self._drained, None, None
                assert drained is not None
                await drained()

    def take_queued(self) -> BusMessage | None:
        """For the handler running now: the next queued message, which it then handles
        itself (counted as delivered, and finished with when the handler returns), or
        ``None`` if nothing may be taken now. A proxy writes what is queued for its link in
        one batch this way: its mailbox is its outbox."""
        message = self.mailbox.take_nowait()
        if message is not None:
            self.delivered += 1
            self._handled += 1
            if message.receipt is not None:
                if self._taken is None:
                    self._taken = []
                self._taken.append(message)
            if _timing:
                self._timed(message)
        return message

    def _release_taken(self) -> None:
        taken, self._taken = self._taken, None
        for message in taken or ():
            receipt = message.receipt
            assert receipt is not None
            receipt.release()

    def _timed(self, message: BusMessage) -> None:
        sent = getattr(message, "sent_at", None)
        if sent is not None:
            self.wait_seconds += time.monotonic() - sent
            self.waited += 1

    def when_drained(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback()`` in the delivery task once as many messages as are queued now
        (and the one in hand) have been handled. Senders take turns, so this is a count: the
        messages handled by then are not exactly those queued now. A worker's graceful end.
        """
        self._drain_at = self._handled + len(self.mailbox) + (1 if self._handling else 0)
        self._drained = callback

    @property
    def _may_go_direct(self) -> bool:
        return (
            self._direct is not None
            and not self._handling
            and not self._in_direct
            and not self.mailbox
        )

    async def _try_direct(self, message: BusMessage) -> bool:
        """Offer ``message`` to the direct handler (the caller checked it may go direct)."""
        assert self._direct is not None
        self._in_direct = True
        try:
            taken = await self._direct(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed(message)
            return True  # handled, badly: like a handler that raised, it is not redelivered
        finally:
            self._in_direct = False
        if taken:
            self.delivered += 1
        return taken

    def _failed(self, message: BusMessage) -> None:
        self.errors += 1
        logger.exception(
            "subscriber %s failed on %s from %s; delivery goes on",
            self.name,
            type(message).__name__,
            message.source,
        )


class WorkerBus(abc.ABC):
    """The bus that workers and proxies share.

    Subclasses implement :meth:`send` (and, for a remote backend, :meth:`start`, :meth:`stop`
    and interest changes); local delivery to subscribers is common to every bus.

    Args:
        capacity: default data capacity of each subscriber's queue.
        system_capacity: default system capacity of each subscriber's queue.
    """

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_CAPACITY,
        system_capacity: int = DEFAULT_SYSTEM_CAPACITY,
    ) -> None:
        if capacity < 1 or system_capacity < 1:
            raise ConfigurationError("bus queue capacities must be at least 1")
        self.capacity = capacity
        self.system_capacity = system_capacity
        self._index: InterestIndex[Subscription] = InterestIndex()
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def subscriptions(self) -> list[Subscription]:
        return self._index.subscribers()

    async def start(self) -> None:
        """Start the bus. Starting a running bus does nothing."""
        self._running = True

    async def stop(self) -> None:
        """Stop the bus: every delivery task is cancelled and awaited. Idempotent."""
        self._running = False
        for subscription in self._index.subscribers():
            await self.unsubscribe(subscription)

    async def subscribe(
        self,
        name: str,
        handler: MessageHandler,
        interest: Interest,
        *,
        capacity: int | None = None,
        system_capacity: int | None = None,
        direct: DirectHandler | None = None,
        admit: Callable[[BusMessage], bool] | None = None,
    ) -> Subscription:
        """Deliver the messages ``interest`` selects to ``handler``, one at a time.

        ``direct``, if given, is tried first, in the sender's task, whenever the subscriber
        has nothing queued and nothing in hand (see the module documentation); it must not
        wait long, and returns ``False`` to have the message queued for ``handler``. If it
        does wait, later messages go to ``handler`` meanwhile: keeping them in order is then
        the subscriber's job (a proxy's link writes one message at a time, in turn).

        ``admit``, if given, is asked before each data message is handed over: while it
        returns ``False`` the message waits at the head of its sender's lane and the other
        senders' messages go first; call ``subscription.mailbox.readmit()`` when it may say
        ``True`` again.

        Returns the :class:`Subscription`, to pass to :meth:`unsubscribe`.

        Raises:
            BusClosedError: the bus is not running.
        """
        if not self._running:
            raise BusClosedError(f"cannot subscribe {name!r}: the bus is not running")
        capacity = self.capacity if capacity is None else capacity
        system_capacity = self.system_capacity if system_capacity is None else system_capacity
        if capacity < 1 or system_capacity < 1:
            raise ConfigurationError(f"queue capacities of {name!r} must be at least 1")
        mailbox: Mailbox[BusMessage] = Mailbox(capacity, system_capacity, admit)
        subscription = Subscription(name, handler, interest, mailbox, direct)
        subscription._task = asyncio.get_running_loop().create_task(
            subscription._run(), name=f"bus-delivery:{name}"
        )
        self._index.add(subscription, interest)
        await self._interest_changed()
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Stop delivering to ``subscription``; what is still queued is discarded.

        Called from the subscriber's own handler, the handler finishes and no further message
        is delivered. Otherwise the delivery task is cancelled and awaited. Idempotent.
        """
        if subscription in self._index:
            self._index.remove(subscription)
            await self._interest_changed()
        left = subscription.mailbox.close()
        if left:
            logger.debug("subscriber %s left %d undelivered messages", subscription.name, len(left))
        task = subscription._task
        if task is not None:
            await cancel_and_wait(task)

    def bind_registry(self, registry: WorkerRegistry) -> None:  # noqa: B027 (optional hook)
        """Called by the runner before :meth:`start`: a cross-process bus shares it."""

    async def _interest_changed(self) -> None:  # noqa: B027 (optional hook)
        """Hook for backends that subscribe remotely to what local subscribers want."""

    @abc.abstractmethod
    async def send(
        self,
        message: BusMessage,
        *,
        overflow: Overflow | None = None,
        timeout: float | None = None,
    ) -> None:
        """Send ``message`` to every subscriber whose interest selects it.

        Args:
            message: the message; its ``target`` selects the recipient (``None`` broadcasts).
            overflow: what to do when a recipient's queue is full; defaults to the message
                class's ``overflow``. System messages always wait.
            timeout: with ``WAIT``, the longest time to wait for room, in seconds
                (``None``: as long as it takes).

        Raises:
            BusClosedError: the bus is not running.
            BusFullError: a recipient's queue stayed full for ``timeout`` seconds. Recipients
                with room have received the message.

        Cancelling a send that waits for room leaves the message unqueued for the recipients
        still full, and queued for the others.
        """

    def offer(self, message: BusMessage) -> bool:
        """Send ``message`` now if that needs no waiting at all; ``False`` when nothing was
        done (then :meth:`send` it). The fast path of a link delivering what it received:
        no turn of the event loop, and never a partial delivery."""
        return False

    def _offer_local(self, message: BusMessage) -> bool:
        # One recipient with room, and no handler to await: what a link's message to its
        # local worker usually is. Anything else goes through send().
        if not self._running:
            return False
        recipients = self._index.recipients(message)
        if len(recipients) != 1:
            return not recipients
        subscription = recipients[0]
        mailbox = subscription.mailbox
        if mailbox.closed:
            return True  # as send() does: the subscriber has left
        if subscription._may_go_direct:
            return False
        if _timing:
            object.__setattr__(message, "sent_at", time.monotonic())
        return mailbox.offer(message, message.system, message.source)

    async def _deliver_local(
        self, message: BusMessage, overflow: Overflow | None, timeout: float | None
    ) -> None:
        if not self._running:
            raise BusClosedError(
                f"cannot send {type(message).__name__}: the bus is not running"
                " (start the runner first)"
            )
        recipients = self._index.recipients(message)
        if not recipients:
            return
        if _timing:
            object.__setattr__(message, "sent_at", time.monotonic())
        system = message.system
        receipt = message.receipt
        blocked: list[Subscription] | None = None
        for subscription in recipients:
            mailbox = subscription.mailbox
            if mailbox.closed:
                continue
            if subscription._may_go_direct and (
                await subscription._try_direct(message) or mailbox.closed
            ):
                continue  # handled already, or nobody is left to
            if mailbox.offer(message, system, message.source):
                if receipt is not None:
                    receipt.hold()  # the subscriber's run lets go once it has handled it
                continue
            policy = Overflow.WAIT if system else (overflow or message.overflow)
            if policy is Overflow.DROP:
                subscription.dropped += 1
                if subscription.dropped % _DROP_LOG_EVERY == 1:
                    logger.warning(
                        "queue of %s is full (%d): dropped %s from %s (%d dropped so far)",
                        subscription.name,
                        subscription.mailbox.capacity,
                        type(message).__name__,
                        message.source,
                        subscription.dropped,
                    )
                continue
            if blocked is None:
                blocked = []
            blocked.append(subscription)
        if blocked:
            await self._wait_for_room(message, blocked, timeout)

    async def _wait_for_room(
        self, message: BusMessage, blocked: list[Subscription], timeout: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        receipt = message.receipt
        for subscription in blocked:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            if receipt is not None:
                # Held before queuing: the subscriber may handle it before this task resumes.
                receipt.hold()
            try:
                await asyncio.wait_for(
                    subscription.mailbox.put(message, message.system, message.source), remaining
                )
            except BaseException as exc:
                if receipt is not None:
                    receipt.release()  # not queued
                if isinstance(exc, asyncio.TimeoutError):
                    raise BusFullError(
                        f"queue of {subscription.name!r} stayed full for {timeout}s: "
                        f"{type(message).__name__} from {message.source!r} was not queued for it"
                    ) from None
                if isinstance(exc, BusClosedError):
                    continue  # the subscriber left while we waited
                raise


class InMemoryBus(WorkerBus):
    """The embedded bus: every subscriber lives in this process.

    See the module documentation for ordering and overflow rules.
    """

    async def send(
        self,
        message: BusMessage,
        *,
        overflow: Overflow | None = None,
        timeout: float | None = None,
    ) -> None:
        await self._deliver_local(message, overflow, timeout)

    def offer(self, message: BusMessage) -> bool:
        return self._offer_local(message)


AsyncQueueBus = InMemoryBus
"""Another name for :class:`InMemoryBus` (the name the reference implementation uses)."""
