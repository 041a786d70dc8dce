"""Configuration with pydantic-settings: every setting, its environment variable and default.

Each field reads the environment variable ``BUSPROXY_<FIELD NAME>`` (``BUSPROXY_BUS_URL``,
``BUSPROXY_MAX_MESSAGE_SIZE``...). Mappings and lists are given as JSON, for example
``BUSPROXY_BEARER_TOKENS='{"s3cret-token": "alice"}'``. See ``docs/configuration.md``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .proxy.reconnect import ReconnectPolicy

__all__ = ["BusProxySettings"]


DECODED_OVERHEAD = 4
"""How many times its size on the wire a decoded message takes in memory, at most (estimate)."""

SOCKET_BUFFERS = 4 * 65_536
"""The socket buffers of one connection in the process: uvicorn's read and write buffers and
the websockets protocol's (the kernel's own are not in the process's memory)."""

LINK_OVERHEAD = 128 * 1024
"""What an idle connection costs the server: its proxy, link, tasks and objects (about 53 KB
measured by ``python -m bench``), with room to spare."""


class BusProxySettings(BaseSettings):
    """Settings of the bus, the proxies and the FastAPI integration."""

    model_config = SettingsConfigDict(env_prefix="BUSPROXY_", extra="ignore")

    # -- bus ---------------------------------------------------------------------------------
    bus_url: str = Field(
        "memory://",
        description="Which bus the app shares: memory:// (one process) or redis://host:port/db.",
    )
    bus_delivery: Literal["pubsub", "durable"] = Field(
        "pubsub",
        description="On Redis: pubsub (at most once, the fastest) or durable (Redis streams:"
        " nothing lost or repeated across restarts; see docs/deployment.md).",
    )
    bus_stream_max_len: int = Field(
        100_000, ge=1, description="Durable delivery: entries each worker's stream keeps, about."
    )
    bus_stream_max_age: float = Field(
        86_400.0,
        gt=0,
        description="Durable delivery: seconds an entry is kept unread (and an idle stream).",
    )
    runner_name: str | None = Field(
        None, description='Name of the app\'s runner (default "runner-<8 hex digits>").'
    )
    bus_queue_size: int = Field(
        1000,
        ge=1,
        description="Data messages each subscriber's queue holds (its senders take turns).",
    )
    bus_system_queue_size: int = Field(
        100, ge=1, description="System messages each subscriber's queue holds."
    )
    max_jobs_in_flight: int = Field(
        1000, ge=1, description="Unanswered jobs a worker serves at once; more wait in its queue."
    )
    max_jobs_per_source: int = Field(
        16, ge=1, description="Unanswered jobs a worker serves at once for one requester."
    )
    shutdown_timeout: float = Field(
        10.0, ge=0, description="Seconds workers get to end gracefully before being cancelled."
    )

    # -- authentication ----------------------------------------------------------------------
    bearer_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Accepted bearer tokens, each mapped to the identity it authenticates.",
    )
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Accepted API keys, each mapped to the identity it authenticates.",
    )
    api_key_header: str = Field("X-API-Key", description="Header that carries the API key.")
    client_token: SecretStr | None = Field(
        None, description="Bearer token outbound links send (Authorization header)."
    )

    # -- links -------------------------------------------------------------------------------
    max_message_size: int = Field(
        1_048_576, ge=1024, description="Largest message a link accepts, in bytes (larger: 1009)."
    )
    send_queue_size: int = Field(
        1000, ge=1, description="Messages queued for a peer (the client's outbox too)."
    )
    send_timeout: float = Field(
        10.0, gt=0, description="Seconds a full send queue or stuck write is tolerated."
    )
    max_bad_frames: int = Field(
        10, ge=1, description="Refused inbound messages in a row before a link is closed."
    )
    ping_interval: float | None = Field(
        20.0, gt=0, description="Seconds between keepalive pings (None: no pings)."
    )
    ping_timeout: float | None = Field(
        20.0, gt=0, description="Seconds a ping may go unanswered before the link is closed."
    )
    batching: bool = Field(
        True, description="Batch queued messages into one WebSocket message with our peers."
    )
    resume_grace: float | None = Field(
        30.0,
        gt=0,
        description="Seconds the server keeps a disconnected client's session for it to resume"
        " (None: sessions end with their connection).",
    )
    replay_buffer_size: int = Field(
        1_048_576,
        ge=65_536,
        description="Bytes sent on a resumable link and kept until the peer acknowledges them;"
        " when full, senders wait.",
    )
    duplicate_policy: Literal["refuse", "replace"] = Field(
        "refuse",
        description="A second connection for a connected worker name: refuse it, or replace "
        "the first.",
    )

    # -- outbound links (client side) --------------------------------------------------------
    open_timeout: float = Field(10.0, gt=0, description="Seconds allowed to open a connection.")
    outbox_max_age: float | None = Field(
        60.0, gt=0, description="Seconds a message may wait in the outbox while disconnected."
    )
    reconnect_initial_delay: float = Field(
        0.5, ge=0, description="Wait after the first failed connect, in seconds."
    )
    reconnect_max_delay: float = Field(30.0, ge=0, description="Longest wait between tries.")
    reconnect_max_attempts: int | None = Field(
        None, ge=1, description="Failed tries in a row before giving up (None: never)."
    )
    compression: Literal["deflate"] | None = Field(
        None, description='"deflate" for permessage-deflate on outbound links, or None.'
    )

    def reconnect_policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(
            initial_delay=self.reconnect_initial_delay,
            max_delay=max(self.reconnect_max_delay, self.reconnect_initial_delay),
            max_attempts=self.reconnect_max_attempts,
        )

    def link_memory_budget(self) -> int:
        """What one connection can make the server hold at worst, in bytes (an estimate).

        Every buffer on the way from a peer's socket to a shared worker and back, each full of
        messages of ``max_message_size``, decoded (at :data:`DECODED_OVERHEAD` times their
        size): the message its reader holds; its lane in the shared worker's queue
        (``bus_queue_size``); its jobs in flight (``max_jobs_per_source``, a request and an
        answer each); the answers in its proxy's queue (``bus_queue_size``) and send queue
        (``send_queue_size``); what a resumable link keeps until it is acknowledged
        (``replay_buffer_size``, serialized) and what it let in and has not yet delivered (its
        receive window, ``replay_buffer_size`` of serialized messages, decoded); plus the
        socket buffers of uvicorn and websockets
        (:data:`SOCKET_BUFFERS`) and what an idle link costs (:data:`LINK_OVERHEAD`). Past
        these the chain pushes back: the link stops reading its socket. Divide the memory you
        give the server by this to know how many connections it serves at worst.
        """
        messages = (
            1
            + self.bus_queue_size
            + 2 * self.max_jobs_per_source
            + self.bus_queue_size
            + self.send_queue_size
        )
        decoded = messages * self.max_message_size * DECODED_OVERHEAD
        received = self.replay_buffer_size * DECODED_OVERHEAD
        return decoded + self.replay_buffer_size + received + SOCKET_BUFFERS + LINK_OVERHEAD

    def server_proxy_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`WebSocketProxyServer` these settings give."""
        return {
            "max_message_size": self.max_message_size,
            "send_queue_size": self.send_queue_size,
            "send_timeout": self.send_timeout,
            "max_bad_frames": self.max_bad_frames,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "batching": self.batching,
            "resume_grace": self.resume_grace,
            "replay_buffer_size": self.replay_buffer_size,
        }

    def client_proxy_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`WebSocketProxyClient` these settings give."""
        return {
            "max_message_size": self.max_message_size,
            "send_queue_size": self.send_queue_size,
            "send_timeout": self.send_timeout,
            "max_bad_frames": self.max_bad_frames,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "batching": self.batching,
            "open_timeout": self.open_timeout,
            "outbox_max_age": self.outbox_max_age,
            "compression": self.compression,
            "reconnect": self.reconnect_policy(),
            "replay_buffer_size": self.replay_buffer_size,
        }
