"""The guide's response envelope and error format, and request-body/query decoding.

success: {"status": "success", "data": ..., "timestamp": "...Z"}   (+ "pagination")
error:   {"status": "error", "error": {"code", "message", "details"}, "timestamp": "...Z"}
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from dtq.errors import DtqError, InvalidRequest, UnsupportedMediaType

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
encode = _encoder.encode
JSON = "application/json"


_SECOND_PREFIX: dict[int, str] = {}  # whole second -> "YYYY-MM-DDTHH:MM:SS"


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with a `Z`, millisecond precision.

    Hot (six per task in every response and event): the formatted second is cached, since a
    burst of tasks shares a handful of seconds.
    """
    if t is None:
        return None
    sec = math.floor(t)
    prefix = _SECOND_PREFIX.get(sec)
    if prefix is None:
        if len(_SECOND_PREFIX) >= 4096:
            _SECOND_PREFIX.clear()
        prefix = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _SECOND_PREFIX[sec] = prefix
    return f"{prefix}.{min(int((t - sec) * 1000), 999):03d}Z"


def now_iso() -> str:
    return iso(time.time())  # type: ignore[return-value]


def success(data: Any, *, pagination: dict[str, int] | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"status": "success", "data": data}
    if pagination is not None:
        body["pagination"] = pagination
    body.update(extra)
    body["timestamp"] = now_iso()
    return encode(body)


def pagination(skip: int, limit: int, total: int) -> dict[str, int]:
    return {"skip": skip, "limit": limit, "total": total, "pages": -(-total // limit)}


def error_info(exc: DtqError) -> dict[str, Any]:
    """The guide's error object for `exc`: the one place an error becomes wire JSON (the
    envelope's `error`, and each refused item of an ack batch)."""
    return {"code": exc.code, "message": exc.message, "details": exc.details}


def error_body(exc: DtqError) -> bytes:
    return encode({"status": "error", "error": error_info(exc), "timestamp": now_iso()})


# -- decoding ----------------------------------------------------------------------------

_AT_PATH = re.compile(r" - at `\$((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])+)`$")
# msgspec's own messages, and the convention of the models' `__post_init__` checks
# ("field `run_at` must be ..."), name the field in backquotes.
_NAMED = re.compile(r"(?:missing required field|unknown field|field) `([^`]+)`")
_PATH_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_FLOAT_FOR_INT = re.compile(r"^Expected `int(?: \| null)?`, got `float`")
_MAX_WHOLE_FLOAT_FIXES = 64  # more integer fields than any body has


def _field_of(message: str) -> str | None:
    """`$.tasks[0].name` -> "tasks[0].name"; "missing required field `name`" -> "name"."""
    prefix = ""
    m = _AT_PATH.search(message)
    if m:
        prefix = m.group(1).lstrip(".")
        message = message[: m.start()]
    named = _NAMED.search(message)
    if named:
        return f"{prefix}.{named.group(1)}" if prefix else named.group(1)
    return prefix or None


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidRequest:
    text = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        field = _field_of(text)
        reason = _AT_PATH.sub("", text)
        return InvalidRequest(
            f"Invalid value for {field}: {reason}" if field else f"Invalid request: {reason}",
            field=field or "body",
            reason=reason,
        )
    return InvalidRequest("Malformed JSON body", field="body", reason=text)


# A body must also survive being stored (MessagePack) and sent back inside an envelope (JSON):
# integers beyond 64 bits cannot be stored, and nesting close to the recursion limit would
# fail when encoded a few levels deeper. Refused here, as a 400, before anything is written.
_storable = msgspec.msgpack.Encoder()
_NESTING_HEADROOM = 16  # levels of room for the envelope and the deeper stack of the encoders


def _holds_free_json(tp: msgspec.inspect.Type, seen: set[type] | None = None) -> bool:
    """Whether a decoded value of this type can hold arbitrary JSON (an `Any` somewhere: a
    payload, a result): only such values can carry huge integers or deep nesting."""
    seen = set() if seen is None else seen
    if isinstance(tp, msgspec.inspect.AnyType):
        return True
    if isinstance(tp, msgspec.inspect.StructType):
        if tp.cls in seen:
            return False
        seen.add(tp.cls)
        return any(_holds_free_json(f.type, seen) for f in tp.fields)
    inner: list[msgspec.inspect.Type] = []
    for attr in ("type", "item_type", "key_type", "value_type"):
        if isinstance(getattr(tp, attr, None), msgspec.inspect.Type):
            inner.append(getattr(tp, attr))
    for attr in ("item_types", "types"):
        inner.extend(getattr(tp, attr, ()))
    return any(_holds_free_json(t, seen) for t in inner)


_STORABLE_CHECK: dict[type, bool] = {}  # body model -> whether decode_body checks storability


def _needs_storable_check(model: type) -> bool:
    needed = _STORABLE_CHECK.get(model)
    if needed is None:
        needed = _STORABLE_CHECK[model] = _holds_free_json(msgspec.inspect.type_info(model))
    return needed


def _check_storable(value: Any) -> None:
    for _ in range(_NESTING_HEADROOM):
        value = (value,)
    try:
        _storable.encode(value)
    except OverflowError:
        raise InvalidRequest(
            "Integers must fit in 64 bits", field="body", reason="integer out of range"
        ) from None
    except UnicodeEncodeError:  # a lone surrogate that came in through a path we do not parse
        raise _not_utf8() from None
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        "JSON body is nested too deeply", field="body", reason="too deeply nested"
    )


def _not_utf8() -> InvalidRequest:
    return InvalidRequest(
        "JSON body is not valid UTF-8 (invalid bytes, overlong forms or surrogates)",
        field="body",
        reason="invalid UTF-8",
    )


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json` or `application/<anything>+json`, with any parameters."""
    if not content_type:
        return False
    base = content_type.split(";", 1)[0].strip().lower()
    return base == JSON or (base.startswith("application/") and base.endswith("+json"))


def require_json_media_type(content_type: str | None) -> None:
    if not is_json_media_type(content_type):
        raise UnsupportedMediaType(
            "Request bodies must be JSON: send Content-Type: application/json",
            field="Content-Type",
            reason=f"unsupported media type {content_type!r}" if content_type else "missing",
        )


def decode_body(raw: bytes, model: type[T]) -> T:
    """One typed decode; the rare refusals that are only a whole-number float given for an
    integer (`116.0`) are retried off the hot path."""
    if not raw.strip():
        raise InvalidRequest("A JSON body is required", field="body", reason="empty body")
    fixed = False
    try:
        value = msgspec.json.decode(raw, type=model)
    except msgspec.ValidationError as exc:
        value = _whole_floats_as_ints(raw, model, exc)
        fixed = True  # `1e19` became an integer: its digits are not in the text
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    except UnicodeDecodeError:
        raise _not_utf8() from None
    except RecursionError:
        raise _too_deep() from None
    # A lease or heartbeat body holds no free-form JSON; a body with no long digit run and few
    # brackets cannot hold a too-large integer or deep nesting: skip the trial encode then.
    if _needs_storable_check(model) and (fixed or _may_be_unstorable(raw)):
        _check_storable(value)
    return value


# An integer beyond 64 bits has at least 19 digits in its JSON text (2**63 has 19); nesting
# needs at least one `[` or `{` per level. Either test may be true of a storable body (digits
# in a string, brackets in text): then the trial encode decides.
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{19}")
_MAX_UNCHECKED_BRACKETS = 200  # far below the encoders' recursion limit (~1,000 levels)


def _may_be_unstorable(raw: bytes) -> bool:
    return (
        raw.count(b"[") + raw.count(b"{") > _MAX_UNCHECKED_BRACKETS
        or _LONG_DIGIT_RUN.search(raw) is not None
    )


def _decode_untyped(raw: bytes) -> Any:
    # The typed decode may have stopped before the end: the rest can still be malformed.
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise validation_error(exc) from None
    except UnicodeDecodeError:
        raise _not_utf8() from None
    except RecursionError:
        raise _too_deep() from None


def _whole_floats_as_ints(raw: bytes, model: type[T], exc: msgspec.ValidationError) -> T:
    """JSON has one number type, so `116.0` is the integer 116 (what a client that keeps every
    number as a double sends); `116.5` stays an error. Only the integer fields msgspec names
    are changed: a payload's `1.0` stays a float."""
    tree: Any = None
    for _ in range(_MAX_WHOLE_FLOAT_FIXES):
        text = str(exc)
        at = _AT_PATH.search(text)
        if not _FLOAT_FOR_INT.match(text) or at is None:
            break
        if tree is None:
            tree = _decode_untyped(raw)
        steps = [name or int(index) for name, index in _PATH_STEP.findall(at.group(1))]
        parent = tree
        for step in steps[:-1]:
            parent = parent[step]
        number = parent[steps[-1]]
        if not (isinstance(number, float) and number.is_integer()):
            break
        parent[steps[-1]] = int(number)
        try:
            converted: T = msgspec.convert(tree, model)
            return converted
        except msgspec.ValidationError as again:
            exc = again
    raise validation_error(exc) from None


def decode_query(args: Any, model: type[T]) -> T:
    """Query-string values (all strings) into a typed struct; repeated keys are errors, and so
    is `null` (msgspec's lax mode reads it as "absent"; a parameter left out is absent)."""
    values: dict[str, Any] = {}
    for key in args:
        got = args.getlist(key)
        if len(got) > 1:
            raise InvalidRequest(f"Query parameter {key} given twice", field=key)
        values[key] = got[0]
    try:
        query = msgspec.convert(values, model, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = _field_of(text) or "query"
        reason = _AT_PATH.sub("", text)
        raise InvalidRequest(
            f"Invalid query parameter {field}: {reason}", field=field, reason=reason
        ) from None
    for key in values:
        if getattr(query, key) is None:
            raise InvalidRequest(
                f"Invalid query parameter {key}: leave it out rather than sending {values[key]!r}",
                field=key,
                reason="not a value",
            )
    return query
