"""Request bodies over the fast lane: the REST models, decoded from MessagePack, refused with
the same `InvalidRequest` (field, reason) as the REST route gives the same body in JSON."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from dtq.errors import InvalidRequest
from dtq.net.envelope import _check_storable, _needs_storable_check, validation_error

T = TypeVar("T")
_decoders: dict[type, msgspec.msgpack.Decoder[object]] = {}


def decode_body(raw: msgspec.Raw | bytes, model: type[T]) -> T:
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.msgpack.Decoder(model)
    try:
        value: T = decoder.decode(raw)  # type: ignore[assignment]
    except msgspec.ValidationError as exc:
        raise validation_error(exc) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest("Malformed MessagePack body", field="body", reason=str(exc)) from None
    except RecursionError:
        raise InvalidRequest(
            "Body is nested too deeply", field="body", reason="too deeply nested"
        ) from None
    if _needs_storable_check(model):
        _check_storable(value)
    return value
