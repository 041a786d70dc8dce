"""What the client and server proxies share: a worker that forwards through a link."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ..bus import DirectHandler
from ..closecodes import CloseCode
from ..exceptions import ConfigurationError
from ..interest import Interest
from ..messages import BusMessage, BusWorkerRegistryMessage, WorkerRegistryEntry
from ..serializers import JSONMessageSerializer, MessageSerializer
from ..worker import BaseWorker
from ._link import Link
from ._outbox import Outbox
from .forwarding import ForwardingRules, SessionControl, session_control
from .protocol import LinkConfig, LinkStats, SessionOutcome
from .resume import Persist, SessionState

logger = logging.getLogger("fastapi_busproxy.proxy")

MIN_MESSAGE_SIZE = 1024


class ProxyWorker(BaseWorker):
    """Base of the two proxies: forwards bus messages through the current :class:`Link`."""

    _client_end: ClassVar[bool] = False  # the client's end of its links

    def __init__(
        self,
        name: str,
        *,
        local_worker: str,
        remote_worker: str,
        forward_messages: Iterable[type[BusMessage]],
        serializer: MessageSerializer | None,
        outbound_needs_local_source: bool,
        forward_sources: Iterable[str] | None,
        config: LinkConfig,
        outbox: Outbox,
        active: bool,
    ) -> None:
        super().__init__(name, active=active)
        if config.max_message_size < MIN_MESSAGE_SIZE:
            raise ConfigurationError(
                f"max_message_size must be at least {MIN_MESSAGE_SIZE} bytes (the readiness"
                f" announcement alone takes a few hundred), not {config.max_message_size}"
            )
        self.rules = ForwardingRules.build(
            local_worker=local_worker,
            remote_worker=remote_worker,
            forward_types=forward_messages,
            outbound_needs_local_source=outbound_needs_local_source,
            forward_sources=forward_sources,
        )
        self.serializer: MessageSerializer = serializer or JSONMessageSerializer(
            max_size=config.max_message_size
        )
        self.link_config = config
        self.stats = LinkStats()
        self._outbox = outbox
        self._link: Link | None = None
        # Where a resumable session's numbered messages are kept too (see Link).
        self._persist: Persist | None = None

    @property
    def connected(self) -> bool:
        """``True`` while a WebSocket connection is up."""
        return self._link is not None and not self._link.closing

    @property
    def queued(self) -> int:
        """Messages waiting to cross (in the send queue, or the client's outbox)."""
        return len(self._outbox)

    def bus_interest(self) -> Interest:
        # Its own name (activation, end, cancel), plus what the rules may forward.
        return Interest(targets=frozenset((self.name,))).union(self.rules.interest())

    async def _receive(self, message: BusMessage) -> None:
        if self._crosses(message):
            await self._forward(message)
        else:
            await super()._receive(message)

    def _admission(self) -> Callable[[BusMessage], bool] | None:
        return None  # a proxy serves no jobs: nothing to hold back

    def _direct_handler(self) -> DirectHandler:
        return self._forward_now

    async def _forward_now(self, message: BusMessage) -> bool:
        """Write ``message`` from the sender's task if it crosses and the link is idle."""
        link = self._link
        if link is None or link.closing or not self._crosses(message):
            return False
        return await link.send_direct(message)

    async def _forward(self, message: BusMessage) -> None:
        """In the proxy's bus delivery task: write ``message`` and what else is queued for
        the link in one batch (the mailbox is the outbox while the link is up); queue what
        must wait; hold it while no link can take it."""
        link = self._link
        if link is None or link.closing:
            self._hold(message)
            return
        if not link.can_send_batch:  # the outbox has some, or the peer's window is full
            await self._queue(message)
            return
        batch = [message]
        after = self._take_batch(batch, link.protocol.batch_limit)
        for waiting in await link.send_batch(batch):
            await self._queue(waiting)
        if after is not None:
            await self._receive(after)

    def _take_batch(self, batch: list[BusMessage], limit: int) -> BusMessage | None:
        """Add to ``batch`` what is queued next in the mailbox for the link, up to ``limit``;
        the first queued message that does not cross ends it, and is returned to be handled
        after the batch (order is kept)."""
        subscription = self.subscription
        if subscription is None:
            return None
        crosses = self._crosses
        while len(batch) < limit:
            message = subscription.take_queued()
            if message is None:
                return None
            if not crosses(message):
                return message
            batch.append(message)
        return None

    def _crosses(self, message: BusMessage) -> bool:
        """``message``, seen on the local bus, goes to the peer (not the proxy's own)."""
        return message.target != self.name and self.rules.should_send(message)

    async def _queue(self, message: BusMessage) -> None:
        """Queue ``message`` behind what waits in the outbox; the link's writer sends it when
        it may. A full outbox makes this wait (backpressure up the bus) up to
        ``send_timeout``; then the link closes (peer too slow) and the message is held."""
        link = self._link
        outbox = self._outbox
        if link is not None and not link.closing:
            if outbox.put_nowait(message):  # it wakes the link's writer
                return
            try:
                await asyncio.wait_for(outbox.wait_for_room(), self.link_config.send_timeout)
            except asyncio.TimeoutError:
                logger.warning(
                    "proxy %s: send queue full (%d) for %.1fs; closing the link with %d",
                    self.name,
                    outbox.max_size,
                    self.link_config.send_timeout,
                    CloseCode.PEER_TOO_SLOW,
                )
                await link.close(CloseCode.PEER_TOO_SLOW, "peer too slow")
            else:
                link = self._link  # it may have changed meanwhile
                if link is not None and not link.closing and outbox.put_nowait(message):
                    return
        self._hold(message)

    def _hold(self, message: BusMessage) -> None:
        """Keep (or drop) a message while no link can take it."""
        self.stats.dropped += 1
        logger.debug("proxy %s: not connected, dropped %s", self.name, type(message).__name__)

    def _announce(
        self, link: Link, entry: WorkerRegistryEntry, target: str | None = None
    ) -> None:
        """Tell the peer that our local worker is ready (the reference's handshake)."""
        link.send_now(
            BusWorkerRegistryMessage(
                source=self.name, target=target, runner=self.runner.name, workers=[entry]
            )
        )

    def _offer_inbound(self, message: BusMessage) -> bool:
        """Deliver ``message`` now if that needs no waiting (see :meth:`WorkerBus.offer`)."""
        return session_control(message) is None and self.bus.offer(message)

    async def _deliver_inbound(self, message: BusMessage) -> None:
        control = session_control(message)
        if control is None:
            await self.bus.send(message)
            return
        # The peer ends its own session (this connection's workers, or the runner of a
        # script), never a worker other sessions share: the message goes no further.
        reason = getattr(message, "reason", None) or f"{type(message).__name__} from the peer"
        logger.info("proxy %s: the peer asked to %s the session", self.name, control.value)
        # In a task of the proxy's own: ending the session stops the proxy, whose link (and so
        # the task that received this) is torn down meanwhile.
        session = self.session
        if control is SessionControl.END:
            self.spawn(session.end(reason), name="peer-end")
        else:
            self.spawn(session.cancel(reason), name="peer-cancel")

    def _new_link(
        self,
        transport: Any,
        *,
        framed: bool,
        app_keepalive: bool,
        session: SessionState | None = None,
        resumable: bool = False,
    ) -> Link:
        """A link on ``transport``; ``session`` makes it resumable from the start,
        ``resumable`` says it may become so (an in-band upgrade)."""
        config = self.link_config
        if app_keepalive != config.app_keepalive:
            from dataclasses import replace

            config = replace(config, app_keepalive=app_keepalive)
        return Link(
            name=self.name,
            transport=transport,
            rules=self.rules,
            serializer=self.serializer,
            framed=framed,
            deliver=self._deliver_inbound,
            offer=self._offer_inbound,
            outbox=self._outbox,
            stats=self.stats,
            config=config,
            session=session,
            on_outcome=self._session_outcome if resumable or session is not None else None,
            on_drained=self._drained if resumable or session is not None else None,
            client=self._client_end,
            persist=self._persist,
        )

    def _drained(self) -> None:
        """A resumable link's peer acknowledged everything sent, and nothing is queued."""

    async def _session_outcome(self, outcome: SessionOutcome) -> None:
        """The client's side of a welcome (see :class:`WebSocketProxyClient`)."""

    def _link_down(self) -> None:
        gone = self.runner.registry.unregister_origin(self.name)
        if gone:
            logger.debug("proxy %s: unregistered remote workers %s", self.name, gone)
