"""The WebSocket proxies that bridge the buses of two processes.

- :class:`~fastapi_busproxy.proxy.client.WebSocketProxyClient` connects to a URL;
- :class:`~fastapi_busproxy.proxy.server.WebSocketProxyServer` serves one accepted
  Starlette/FastAPI WebSocket;
- :mod:`~fastapi_busproxy.proxy.forwarding` holds the rules of what crosses;
- :mod:`~fastapi_busproxy.proxy.framing` the wire layout and subprotocol negotiation;
- :mod:`~fastapi_busproxy.proxy.protocol` every decision of one link, as pure code;
- :mod:`~fastapi_busproxy.proxy.reconnect` the client's backoff policy.
"""

from .client import HeadersProvider, WebSocketProxyClient
from .forwarding import ForwardingRules, Refusal
from .protocol import CloseInfo, LinkStats
from .reconnect import ReconnectPolicy
from .server import WebSocketProxyServer

__all__ = [
    "CloseInfo",
    "ForwardingRules",
    "HeadersProvider",
    "LinkStats",
    "ReconnectPolicy",
    "Refusal",
    "WebSocketProxyClient",
    "WebSocketProxyServer",
]
