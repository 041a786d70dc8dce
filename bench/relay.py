"""A TCP relay on 127.0.0.1 that a test can cut: the network between a client and a server.

Each accepted connection is relayed to ``target_port``. :meth:`Relay.cut` breaks every current
connection the way networks do: a reset (RST, ``SO_LINGER`` 0) or an orderly close (FIN) on
the client's side, the server's side or both; a side left alone stays open but is no longer
relayed (half-open, as after a NAT timeout). What the relay had read and not yet written is
lost, like bytes in flight.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Literal

Break = Literal["rst", "fin"] | None


@dataclass
class _Relayed:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


def _break(writer: asyncio.StreamWriter, how: Break) -> None:
    if how == "rst":
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    elif how == "fin":
        writer.close()


class Relay:
    """Relays each new connection to ``target_port``, or, when nothing listens there, to the
    first of ``fallback_ports`` that takes it (a balancer in front of several instances)."""

    def __init__(self, target_port: int, *fallback_ports: int) -> None:
        self.target_port = target_port  # a test may move it (a server restarted elsewhere)
        self.fallback_ports = fallback_ports
        self.port = 0
        self.accepted = 0
        self._live: list[_Relayed] = []
        self._abandoned: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._new_connection = asyncio.Event()
        self.refuse = False  # reset new connections at once (a server that is down)
        self.refused = 0
        self._refused_one = asyncio.Event()

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            _break(writer, "rst")
            self.refused += 1
            self._refused_one.set()
            return
        for port in (self.target_port, *self.fallback_ports):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # nothing listens there: the next
            break
        else:
            _break(writer, "rst")  # nothing listens anywhere: the client sees a refusal
            return
        relayed = _Relayed(writer, up_writer)
        loop = asyncio.get_running_loop()
        relayed.pumps = [
            loop.create_task(self._pump(reader, up_writer, relayed)),
            loop.create_task(self._pump(up_reader, writer, relayed)),
        ]
        self._live.append(relayed)
        self.accepted += 1
        self._new_connection.set()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, relayed: _Relayed
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        # One side closed: close the other (as a plain TCP proxy does).
        if relayed in self._live:
            self._live.remove(relayed)
            for pump in relayed.pumps:
                if pump is not asyncio.current_task():
                    pump.cancel()
            _break(relayed.client, "fin")
            _break(relayed.server, "fin")

    async def wait_connection(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` connections have been accepted in all."""

        async def reached() -> None:
            while self.accepted < count:
                self._new_connection.clear()
                await self._new_connection.wait()

        await asyncio.wait_for(reached(), timeout)

    async def wait_refused(self, count: int, timeout: float = 10.0) -> None:
        """Wait until ``count`` connections have been refused in all."""

        async def reached() -> None:
            while self.refused < count:
                self._refused_one.clear()
                await self._refused_one.wait()

        await asyncio.wait_for(reached(), timeout)

    def cut(self, client_side: Break, server_side: Break) -> int:
        """Break every current connection; returns how many."""
        live, self._live = self._live, []
        for relayed in live:
            for pump in relayed.pumps:
                pump.cancel()
            for writer, how in ((relayed.client, client_side), (relayed.server, server_side)):
                if how is None:
                    self._abandoned.append(writer)
                else:
                    _break(writer, how)
        return len(live)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut("fin", "fin")
        for writer in self._abandoned:
            writer.close()
        self._abandoned.clear()


@asynccontextmanager
async def running_relay(target_port: int, *fallback_ports: int) -> AsyncIterator[Relay]:
    relay = Relay(target_port, *fallback_ports)
    relay._server = await asyncio.start_server(relay._handle, "127.0.0.1", 0)
    relay.port = relay._server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        await relay.close()
