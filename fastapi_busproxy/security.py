"""Authentication dependencies that work on WebSocket routes (and HTTP routes).

FastAPI's own ``HTTPBearer`` and ``APIKeyHeader`` take a ``Request`` and do not run on
WebSocket routes; these take the connection (``HTTPConnection``), so they run before the
WebSocket is accepted. A refusal closes a WebSocket before it is accepted (``WebSocketException``
with 1008), which the ASGI server answers with HTTP 403, and raises ``HTTPException(403)`` on
an HTTP request; either way the connection never reaches the bus.

Each returns an :class:`Identity`, which a route can use (for example to name the session's
workers)::

    auth = BearerTokenAuth({"s3cret": "alice"})
    include_bus_proxy(app, "/ws", "assistant", remote_worker_name=..., identity=auth)

Secrets are compared in constant time, against every configured secret (no early exit).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, WebSocketException
from starlette.requests import HTTPConnection

from .closecodes import CloseCode
from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .settings import BusProxySettings

__all__ = ["APIKeyHeaderAuth", "BearerTokenAuth", "Identity"]


@dataclass(frozen=True)
class Identity:
    """Who a connection authenticated as.

    Attributes:
        name: the identity the secret maps to (for example a user or a service name).
        scheme: how it was authenticated (``"bearer"``, ``"api-key"``).
    """

    name: str
    scheme: str


def _environment_settings() -> BusProxySettings:
    from .settings import BusProxySettings  # on first use: pydantic-settings is slow to import

    return BusProxySettings()


def _secrets(
    secrets: Mapping[str, str] | Iterable[str] | None, from_settings: dict[str, str], what: str
) -> dict[bytes, str]:
    if secrets is None:
        secrets = from_settings
    if not isinstance(secrets, Mapping):
        secrets = {secret: secret[:4] + "…" for secret in secrets}
    table = {secret.encode(): name for secret, name in secrets.items() if secret}
    if not table:
        raise ConfigurationError(
            f"no {what} configured: pass them, or set them in the environment"
            f" (see BusProxySettings)"
        )
    return table


def _match(presented: str, table: dict[bytes, str]) -> str | None:
    candidate = presented.encode()
    found: str | None = None
    for secret, name in table.items():
        # Compare against every secret, so timing says nothing about which one matched.
        if hmac.compare_digest(candidate, secret):
            found = name
    return found


def _refuse(connection: HTTPConnection, detail: str) -> Exception:
    if connection.scope["type"] == "websocket":
        # Closing before accept: the ASGI server answers the handshake with HTTP 403.
        return WebSocketException(code=CloseCode.POLICY_VIOLATION, reason=detail)
    return HTTPException(status_code=403, detail=detail)


class BearerTokenAuth:
    """Dependency: require ``Authorization: Bearer <token>`` with a configured token.

    Args:
        tokens: accepted tokens, as a mapping token -> identity name, or a list of tokens;
            default: ``BusProxySettings().bearer_tokens`` (``BUSPROXY_BEARER_TOKENS``).
        settings: settings to read the tokens from instead of the environment.

    Raises:
        ConfigurationError: no token is configured (at construction).
    """

    def __init__(
        self,
        tokens: Mapping[str, str] | Iterable[str] | None = None,
        *,
        settings: BusProxySettings | None = None,
    ) -> None:
        if tokens is None:
            settings = settings or _environment_settings()
        self._tokens = _secrets(tokens, settings.bearer_tokens if settings else {}, "tokens")

    async def __call__(self, connection: HTTPConnection) -> Identity:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _refuse(connection, "missing bearer token")
        name = _match(token.strip(), self._tokens)
        if name is None:
            raise _refuse(connection, "invalid bearer token")
        return Identity(name=name, scheme="bearer")


class APIKeyHeaderAuth:
    """Dependency: require a configured API key in a header (default ``X-API-Key``).

    Args:
        keys: accepted keys, as a mapping key -> identity name, or a list of keys; default:
            ``BusProxySettings().api_keys`` (``BUSPROXY_API_KEYS``).
        header: the header's name; default ``BusProxySettings().api_key_header``.
        settings: settings to read keys and header from instead of the environment.

    Raises:
        ConfigurationError: no key is configured (at construction).
    """

    def __init__(
        self,
        keys: Mapping[str, str] | Iterable[str] | None = None,
        *,
        header: str | None = None,
        settings: BusProxySettings | None = None,
    ) -> None:
        if keys is None or header is None:
            settings = settings or _environment_settings()
        self.header = header or (settings.api_key_header if settings else "X-API-Key")
        self._keys = _secrets(keys, settings.api_keys if settings else {}, "API keys")

    async def __call__(self, connection: HTTPConnection) -> Identity:
        key = connection.headers.get(self.header)
        if not key:
            raise _refuse(connection, f"missing {self.header} header")
        name = _match(key, self._keys)
        if name is None:
            raise _refuse(connection, "invalid API key")
        return Identity(name=name, scheme="api-key")
