"""Which credential a request sent: at most one, or 401.

The rule (issue 8, finding 7): if any credential sent is invalid, the request is refused,
whatever else was sent. Simplest to keep true is to accept exactly one: a request that sends
an API key and a bearer token, two API keys, or a token in two places (WebSocket: header,
query and subprotocol) gets 401 ``ambiguous_credentials`` before any of them is checked, even
if both are valid (they may name different principals; whichever we picked, the other would be
silently ignored). HTTP reads headers only; `dtq.net.ws` adds its browser-friendly places.
"""

from __future__ import annotations

from collections.abc import Sequence

from dtq.errors import Unauthorized


def ambiguous_credentials() -> Unauthorized:
    return Unauthorized(
        "Send exactly one credential: X-API-Key or Authorization: Bearer, not both or repeated",
        reason="ambiguous_credentials",
    )


def bearer_of(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` value; 401 for any other scheme."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Authorization header must be 'Bearer <token>'", reason="malformed_authorization"
        )
    return token.strip()


def single_credential(
    api_keys: Sequence[str], bearers: Sequence[str]
) -> tuple[str | None, str | None]:
    """(api key, bearer token), at most one of them set; 401 when more than one was sent."""
    if len(api_keys) + len(bearers) > 1:
        raise ambiguous_credentials()
    return (api_keys[0] if api_keys else None, bearers[0] if bearers else None)
