"""The wire format: requests and replies as Faust's agents write them.

Request, header mode (Faust's default): value = the serialized value; headers
``Faust-Ag-ReplyTo`` and ``Faust-Ag-CorrelationId`` (UTF-8).

Request, envelope mode (older Faust): value = a JSON ``@ReqRepRequest``
object holding ``value``, ``reply_to`` and ``correlation_id``.

Reply: key null; value = a JSON ``@ReqRepResponse`` object holding ``key``
(the request key, echoed as text), ``value`` and ``correlation_id``. Faust
reads no reply headers, so this library marks its additions with headers of
its own: an error reply, a reply that more replies follow, the end of a
stream, and a request's deadline.

Decoding is total: whatever bytes and headers a record carries (truncated
or deeply nested JSON, wrong types in any field, non-UTF-8 text, a
``json_object_hook`` that raises), a decode either returns a well-typed
result or raises :class:`DecodeError`, never anything else. A decoded
request's ``reply_to`` and ``correlation_id`` are both non-empty strings,
the reply topic a legal Kafka topic name, or both ``None`` (a cast).

Spring for Apache Kafka's wire (``wire="spring"``, see :class:`Codec`):
a request carries ``kafka_replyTopic`` (UTF-8), ``kafka_correlationId`` (the
16 bytes of a UUID by default, or its UTF-8 text) and optionally
``kafka_replyPartition`` (a 4-byte big-endian int); its value is the
serialized value itself. A reply carries the request's ``kafka_correlationId``
bytes unchanged, keeps the request's key as its key, goes to the partition
asked for, and its value is the reply value itself (JSON, or text or bytes);
a failure is marked by ``kafka_exception-fqcn`` and
``kafka_exception-message`` headers. A request is read as Spring's when it
carries ``kafka_correlationId``, so one agent answers Faust and Spring
callers, each in its own format.

A caller that reads only one partition of a shared reply topic asks for it
with ``kafka_replyPartition`` on Spring's wire and with ``Replies-ReplyPartition``
(the same 4-byte int, a header of ours that Faust ignores) on Faust's.

Pure functions and plain data only: nothing here does I/O.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import struct
import time
import uuid
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from replies.core.table import Reply
from replies.errors import DecodeError, RemoteError

__all__ = [
    "Headers",
    "Message",
    "Request",
    "Codec",
    "HEADER_REPLY_TO",
    "HEADER_CORRELATION_ID",
    "HEADER_ERROR",
    "HEADER_MORE",
    "HEADER_END",
    "HEADER_DEADLINE",
    "HEADER_STREAM",
    "HEADER_REPLY_PARTITION",
    "SPRING_REPLY_TOPIC",
    "SPRING_CORRELATION_ID",
    "SPRING_REPLY_PARTITION",
    "SPRING_EXCEPTION_FQCN",
    "SPRING_EXCEPTION_MESSAGE",
    "REQUEST_MODES",
    "WIRES",
    "SPRING_CORRELATIONS",
]

Headers = List[Tuple[str, bytes]]

HEADER_REPLY_TO = "Faust-Ag-ReplyTo"
HEADER_CORRELATION_ID = "Faust-Ag-CorrelationId"
HEADER_ERROR = "Replies-Error"
HEADER_MORE = "Replies-More"
HEADER_END = "Replies-End"
HEADER_DEADLINE = "Replies-Deadline"
HEADER_STREAM = "Replies-Stream"
HEADER_REPLY_PARTITION = "Replies-ReplyPartition"

SPRING_REPLY_TOPIC = "kafka_replyTopic"
SPRING_CORRELATION_ID = "kafka_correlationId"
SPRING_REPLY_PARTITION = "kafka_replyPartition"
SPRING_EXCEPTION_FQCN = "kafka_exception-fqcn"
SPRING_EXCEPTION_MESSAGE = "kafka_exception-message"

NS_REQUEST = "@ReqRepRequest"
NS_RESPONSE = "@ReqRepResponse"
# Faust's envelopes around a Record value (a JSON object with "__faust").
NS_MODEL_REQUEST = "faust.agents.models.ModelReqRepRequest"
NS_MODEL_RESPONSE = "faust.agents.models.ModelReqRepResponse"

# What json.dumps encodes without calling ``default``.
_JSON_TYPES = (dict, list, tuple, str, int, float)

# One compact encoder for every value that needs no ``default`` (nearly all
# of them): json.dumps(separators=...) builds a new encoder per call, which
# costs as much as encoding a small value. Thread-safe: it keeps no state
# between calls.
_encode_plain = json.JSONEncoder(separators=(",", ":")).encode
_decode_text = json.JSONDecoder().decode

# A legal Kafka topic name (Kafka's own rule): 1 to 249 of these characters,
# and neither "." nor "..".
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")

# Bounded, recursion-safe reprs of hostile values for error messages.
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60

#: ``"headers"``: Faust >= 1.10's form; ``"envelope"``: older Faust's.
REQUEST_MODES = ("headers", "envelope")
VALUE_SERIALIZERS = ("json", "raw")
#: Whose request/reply headers a caller writes: Faust's or Spring's.
WIRES = ("faust", "spring")
#: How a Spring caller writes ``kafka_correlationId``: a UUID's 16 bytes
#: (``ReplyingKafkaTemplate``'s default) or its text (``setBinaryCorrelation(false)``).
SPRING_CORRELATIONS = ("binary", "string")


class Message(NamedTuple):
    """A record to produce: key, value and headers, all encoded."""

    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers
    #: The partition to write to; ``None`` lets the producer choose.
    partition: Optional[int] = None


class Request(NamedTuple):
    """A decoded request, as an agent sees it."""

    value: Any
    key: Optional[bytes]
    #: Where to reply; ``None`` for a request nobody waits for (a cast).
    reply_to: Optional[str]
    correlation_id: Optional[str]
    #: ``time.time()`` after which nobody waits for the reply, if known.
    deadline: Optional[float]
    #: The caller takes every reply of a generator agent (else only one).
    stream: bool = False
    #: The reply topic's partition the caller reads, if it asked for one.
    reply_partition: Optional[int] = None
    #: ``"faust"`` or ``"spring"``: whose format the reply must take.
    wire: str = "faust"
    #: A Spring caller's correlation id bytes, echoed unchanged on the reply.
    wire_correlation_id: Optional[bytes] = None


def legal_topic(name: object) -> bool:
    """Whether ``name`` is a topic name Kafka accepts."""
    return (
        isinstance(name, str)
        and name not in (".", "..")
        and _TOPIC_NAME.fullmatch(name) is not None
    )


def _short(obj: object) -> str:
    """A short repr of any decoded value, safe for deep or huge ones."""
    try:
        return _repr.repr(obj)
    except Exception:  # an exotic __repr__; decoded JSON has none
        return f"<{type(obj).__name__}>"


#: Headers by name, each with its first value: read once per record, then
#: looked up (a record's headers are scanned once, not once per header).
_Named = Dict[str, object]
_ABSENT = object()


def _named(headers: Sequence[Tuple[str, Optional[bytes]]]) -> _Named:
    """Each header's first value, by name."""
    return dict(reversed(headers))


def _header(named: _Named, name: str) -> Optional[bytes]:
    """The first value of header ``name`` (None if absent); ``b""`` for a null value.

    Raises:
        DecodeError: the value is neither bytes nor null.
    """
    value = named.get(name, _ABSENT)
    if value is _ABSENT:
        return None
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise DecodeError(f"{name} header is not bytes: {type(value).__name__}")


def _text(raw: Optional[bytes], what: str) -> Optional[str]:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} header is not UTF-8: {raw[:80]!r}") from exc


def _address(reply_to: object, correlation_id: object) -> Tuple[Optional[str], Optional[str]]:
    """A request's reply address, checked: both usable, or both ``None``.

    Args:
        reply_to: the reply topic as found, ``None`` if absent.
        correlation_id: the correlation id as found, ``None`` if absent.

    Raises:
        DecodeError: only one of them is given, the topic is not a legal
            Kafka topic name, or the id is not a non-empty string: nobody
            can be answered.
    """
    if reply_to is None and correlation_id is None:
        return None, None  # a cast
    if legal_topic(reply_to) and isinstance(correlation_id, str) and correlation_id:
        return reply_to, correlation_id  # type: ignore[return-value]
    raise DecodeError(
        f"unusable reply address: reply_to={_short(reply_to)}, "
        f"correlation_id={_short(correlation_id)}"
    )


def _header_address(named: _Named) -> Tuple[Optional[str], Optional[str]]:
    """The reply address from the request headers (see :func:`_address`)."""
    return _address(
        _text(_header(named, HEADER_REPLY_TO), HEADER_REPLY_TO),
        _text(_header(named, HEADER_CORRELATION_ID), HEADER_CORRELATION_ID),
    )


def _apply_hook(root: Any, hook: Callable[[Dict[str, Any]], Any]) -> Any:
    """Rebuild plain JSON data with ``hook`` applied to every object.

    Innermost objects first, as :func:`json.loads` would call it. Iterative,
    so that any depth :func:`json.loads` accepted is walked without
    recursion.
    """
    if not isinstance(root, (dict, list)):
        return root

    def frame(node: Any) -> List[Any]:
        # [node, iterator over (key, child), what is built, key of the child being built]
        if isinstance(node, dict):
            return [node, iter(node.items()), {}, None]
        return [node, iter(enumerate(node)), [], None]

    def put(built: Any, key: Any, value: Any) -> None:
        if isinstance(built, dict):
            built[key] = value
        else:
            built.append(value)

    stack = [frame(root)]
    while True:
        top = stack[-1]
        for key, child in top[1]:
            if isinstance(child, (dict, list)):
                top[3] = key
                stack.append(frame(child))
                break
            put(top[2], key, child)
        else:
            stack.pop()
            done = hook(top[2]) if isinstance(top[0], dict) else top[2]
            if not stack:
                return done
            put(stack[-1][2], stack[-1][3], done)


def echo_key(key: Optional[bytes]) -> Optional[str]:
    """The request key as a reply echoes it, in Faust's form.

    Faust writes ``str()`` of the raw key, e.g. ``"b'k1'"``; callers only
    need it for logs, and none should parse it.
    """
    return None if key is None else str(key)


def _partition_of(named: _Named, name: str) -> Optional[int]:
    """The reply partition a request asks for (a 4-byte big-endian int), if any.

    A malformed one is ignored: the reply then goes where the producer puts
    it, which a caller reading the whole topic still gets.
    """
    try:
        raw = _header(named, name)
    except DecodeError:
        return None
    if raw is None or len(raw) != 4:
        return None
    partition: int = struct.unpack(">i", raw)[0]
    return partition if partition >= 0 else None


def spring_correlation_text(raw: bytes) -> str:
    """The text form of a Spring correlation id: 16 bytes read as a UUID, else UTF-8 (else hex)."""
    if len(raw) == 16:
        return str(uuid.UUID(bytes=raw))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + raw.hex()


def _spring_value(data: Optional[bytes], raw: bool) -> Any:
    """A Spring record's value: bytes as they are, else JSON, else text.

    Spring services write JSON (``JsonSerializer``) or plain text
    (``StringSerializer``); text that is not JSON is taken as a string.

    Raises:
        DecodeError: neither JSON nor UTF-8 text.
    """
    if raw or data is None:
        return data
    try:
        return Codec.loads(data)
    except DecodeError:
        try:
            return bytes(data).decode("utf-8")
        except (UnicodeDecodeError, TypeError) as exc:
            raise DecodeError(f"neither JSON nor UTF-8 text: {_short(data)}") from exc


class Codec:
    """Encodes and decodes requests and replies.

    Args:
        value_serializer: ``"json"`` (the default, as in Faust) or ``"raw"``
            (values are ``bytes`` and pass through; only for header-mode
            requests, since envelopes and replies are JSON).
        json_object_hook: called with every JSON object decoded from a value
            (as :func:`json.loads`'s ``object_hook``), e.g. to turn Faust
            ``Record`` dicts (which carry ``"__faust": {"ns": ...}``) into
            your own types. By default they stay plain dicts.
        json_default: called for objects :mod:`json` cannot encode (as
            :func:`json.dumps`'s ``default``).
        request_mode: ``"headers"`` or ``"envelope"``.
        wire: whose headers requests carry: ``"faust"`` or ``"spring"``
            (Spring for Apache Kafka's ``ReplyingKafkaTemplate``). Serving is
            not affected: requests are answered in the format they came in.
        spring_correlation: ``"binary"`` (a UUID's 16 bytes, Spring's
            default) or ``"string"`` (its text), for ``wire="spring"``.
        reply_partition: the partition of the reply topic the caller reads;
            requests ask agents to reply there.

    Raises:
        ValueError: an unknown serializer, request mode, wire or
            correlation form, or a negative partition.
    """

    def __init__(
        self,
        *,
        value_serializer: str = "json",
        json_object_hook: Optional[Callable[[Dict[str, Any]], Any]] = None,
        json_default: Optional[Callable[[Any], Any]] = None,
        request_mode: str = "headers",
        wire: str = "faust",
        spring_correlation: str = "binary",
        reply_partition: Optional[int] = None,
    ) -> None:
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {WIRES}, not {wire!r}")
        if spring_correlation not in SPRING_CORRELATIONS:
            raise ValueError(
                f"spring_correlation must be one of {SPRING_CORRELATIONS}, not {spring_correlation!r}"
            )
        if reply_partition is not None and reply_partition < 0:
            raise ValueError(f"reply_partition must be >= 0, not {reply_partition}")
        if wire == "spring" and request_mode != "headers":
            raise ValueError("Spring requests carry headers: use request_mode='headers'")
        if value_serializer not in VALUE_SERIALIZERS:
            raise ValueError(
                f"value_serializer must be one of {VALUE_SERIALIZERS}, not {value_serializer!r}"
            )
        if request_mode not in REQUEST_MODES:
            raise ValueError(f"request_mode must be one of {REQUEST_MODES}, not {request_mode!r}")
        if request_mode == "envelope" and value_serializer != "json":
            raise ValueError("envelope requests are JSON: use value_serializer='json'")
        self.value_serializer = value_serializer
        self.request_mode = request_mode
        self.wire = wire
        self.spring_correlation = spring_correlation
        self.reply_partition = reply_partition
        self._object_hook = json_object_hook
        self._json_default = json_default

    # -- values and keys ------------------------------------------------

    def dumps(self, obj: Any) -> bytes:
        """JSON-encode ``obj`` compactly, as Faust writes it.

        Raises:
            TypeError: some part of ``obj`` cannot be encoded; the message
                names that part's type (not the envelope's around it).
        """
        try:
            return _encode_plain(obj).encode("utf-8")
        except (TypeError, ValueError, RecursionError):
            pass  # encoded again below, to apply json_default or name the culprit
        refused: List[Any] = []

        def default(part: Any) -> Any:
            # Remember what json could not encode, so the error names it.
            if self._json_default is not None:
                try:
                    return self._json_default(part)
                except TypeError:
                    refused.append(part)
                    raise
            refused.append(part)
            raise TypeError(f"Object of type {type(part).__name__} is not JSON serializable")

        try:
            text = json.dumps(obj, separators=(",", ":"), default=default)
        except RecursionError as exc:
            raise TypeError(f"cannot encode a {type(obj).__name__} as JSON: nested too deeply") from exc
        except (TypeError, ValueError) as exc:
            what = type(refused[-1] if refused else obj).__name__
            raise TypeError(
                f"cannot encode a {what} as JSON: {exc} "
                "(pass json_default= to the App to encode such values)"
            ) from exc
        return text.encode("utf-8")

    @staticmethod
    def loads(data: bytes) -> Any:
        """Decode JSON bytes as they are (no object hook).

        Raises:
            DecodeError: not valid UTF-8 JSON, nested too deeply for the
                decoder, or not bytes at all.
        """
        try:
            if type(data) is bytes:
                try:
                    return _decode_text(data.decode("utf-8"))
                except ValueError:
                    pass  # json.loads below reads UTF-16/32 and BOMs, or names the error
            return json.loads(data)
        except RecursionError as exc:
            raise DecodeError(f"JSON nested too deeply: {bytes(data[:80])!r}...") from exc
        except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
            raise DecodeError(f"not valid JSON: {_short(data)}") from exc

    def _hook(self, obj: Any) -> Any:
        """Apply the object hook to every dict in ``obj``, innermost first.

        Only user values get the hook, never the envelope around them.

        Raises:
            DecodeError: the hook raised (any :class:`Exception`); the
                hook's exception is chained.
        """
        if self._object_hook is None:
            return obj
        try:
            return _apply_hook(obj, self._object_hook)
        except Exception as exc:
            try:
                what = f"{type(exc).__name__}: {exc}"
            except Exception:  # an exception whose str() raises
                what = type(exc).__name__
            raise DecodeError(f"json_object_hook raised {what[:200]}") from exc

    def _jsonable(self, value: Any) -> Any:
        """``value``, or what ``json_default`` makes of it if JSON cannot.

        An envelope's namespace depends on whether its value is a Faust
        Record; a user type that ``json_default`` turns into a Record's JSON
        must count as one, so it is converted before the namespace is chosen.
        """
        if self._json_default is None or value is None or isinstance(value, _JSON_TYPES):
            return value
        try:
            return self._json_default(value)
        except (TypeError, ValueError):
            return value  # dumps() reports it, with advice

    def encode_value(self, value: Any) -> Optional[bytes]:
        """Serialize a request value with the value serializer."""
        if self.value_serializer == "raw":
            if value is None or isinstance(value, bytes):
                return value
            raise TypeError(f"raw values must be bytes or None, not {type(value).__name__}")
        return self.dumps(value)

    def decode_value(self, data: Optional[bytes]) -> Any:
        """Deserialize a request value with the value serializer.

        Raises:
            DecodeError: not JSON, or the object hook raised.
        """
        if self.value_serializer == "raw" or data is None:
            return data
        return self._hook(self.loads(data))

    @staticmethod
    def encode_key(key: Any) -> Optional[bytes]:
        """Encode a Kafka key: bytes pass, text is UTF-8, others are JSON."""
        if key is None or isinstance(key, bytes):
            return key
        if isinstance(key, str):
            return key.encode("utf-8")
        return json.dumps(key, separators=(",", ":")).encode("utf-8")

    # -- requests -------------------------------------------------------

    def encode_request(
        self,
        value: Any,
        *,
        key: Any = None,
        reply_to: Optional[str] = None,
        correlation_id: Optional[str] = None,
        deadline: Optional[float] = None,
        stream: bool = False,
    ) -> Message:
        """Build a request record; without ``reply_to`` it is a cast.

        Args:
            deadline: ``time.time()`` after which the caller stops waiting;
                sent in a header so agents can skip stale work.
            stream: the caller takes every reply a generator agent yields.
                Only this library's callers ask for that: a Faust caller
                must get exactly one reply per request.
        """
        if (reply_to is None) != (correlation_id is None):
            raise ValueError("reply_to and correlation_id go together: give both or neither")
        headers: Headers = []
        payload: Optional[bytes]
        if reply_to is not None and correlation_id is not None and self.request_mode == "envelope":
            value = self._jsonable(value)
            envelope = {
                "value": value,
                "reply_to": reply_to,
                "correlation_id": correlation_id,
                "__faust": {"ns": NS_MODEL_REQUEST if _is_record(value) else NS_REQUEST},
            }
            payload = self.dumps(envelope)
        else:
            payload = self.encode_value(value)
            if reply_to is not None and correlation_id is not None:
                headers += self._address_headers(reply_to, correlation_id)
        if reply_to is not None and self.reply_partition is not None:
            name = SPRING_REPLY_PARTITION if self.wire == "spring" else HEADER_REPLY_PARTITION
            headers.append((name, struct.pack(">i", self.reply_partition)))
        if deadline is not None:
            headers.append((HEADER_DEADLINE, repr(float(deadline)).encode("ascii")))
        if stream:
            headers.append((HEADER_STREAM, b"1"))
        return Message(self.encode_key(key), payload, headers)

    def _address_headers(self, reply_to: str, correlation_id: str) -> Headers:
        """A request's reply address as headers of the codec's wire."""
        if self.wire == "faust":
            return [
                (HEADER_REPLY_TO, reply_to.encode("utf-8")),
                (HEADER_CORRELATION_ID, correlation_id.encode("utf-8")),
            ]
        cid = correlation_id.encode("utf-8")
        if self.spring_correlation == "binary":
            try:
                cid = uuid.UUID(correlation_id).bytes
            except ValueError:
                pass  # not a UUID (a caller's own id): sent as text
        return [(SPRING_REPLY_TOPIC, reply_to.encode("utf-8")), (SPRING_CORRELATION_ID, cid)]

    def _decode_spring_request(
        self, key: Optional[bytes], value: Optional[bytes], named: _Named
    ) -> Request:
        """Read a request from a Spring caller (see :meth:`decode_request`)."""
        deadline = _deadline_of(named)
        stream = _stream_of(named)
        partition = _partition_of(named, SPRING_REPLY_PARTITION)
        try:
            raw_cid = _header(named, SPRING_CORRELATION_ID)
            reply_to, correlation_id = _address(
                _text(_header(named, SPRING_REPLY_TOPIC), SPRING_REPLY_TOPIC),
                None if raw_cid is None else spring_correlation_text(raw_cid),
            )
        except DecodeError as exc:
            exc.request = Request(None, key, None, None, deadline, stream)
            raise
        try:
            result = self._hook(_spring_value(value, self.value_serializer == "raw"))
        except DecodeError as exc:
            exc.request = Request(
                None, key, reply_to, correlation_id, deadline, stream, partition, "spring", raw_cid
            )
            raise
        return Request(result, key, reply_to, correlation_id, deadline, stream, partition, "spring", raw_cid)

    def decode_request(
        self, key: Optional[bytes], value: Optional[bytes], headers: Headers
    ) -> Request:
        """Read a request in either mode.

        The reply address comes from the envelope for an envelope-mode
        request (as in Faust, it wins over headers), else from the headers.
        It is usable only if both the reply topic (a legal Kafka topic name)
        and the correlation id (a non-empty string) are there, or neither
        (a cast).

        Raises:
            DecodeError: the value or a header cannot be decoded, the object
                hook raised, or the reply address is unusable. The error's
                ``request`` attribute holds what could be read: key,
                deadline, and the reply address if it is usable (else
                ``None`` for both), so an agent can still send an error
                reply where one can be sent.
        """
        named = _named(headers)
        if SPRING_CORRELATION_ID in named or SPRING_REPLY_TOPIC in named:
            return self._decode_spring_request(key, value, named)
        deadline = _deadline_of(named)
        stream = _stream_of(named)
        try:
            reply_to, correlation_id = _header_address(named)
        except DecodeError as exc:
            header_error: Optional[DecodeError] = exc
            reply_to = correlation_id = None
        else:
            header_error = None

        partition = _partition_of(named, HEADER_REPLY_PARTITION)

        def fail(error: DecodeError, to: Optional[str], cid: Optional[str]) -> DecodeError:
            error.request = Request(None, key, to, cid, deadline, stream, partition)
            return error

        if self.value_serializer == "raw" or value is None:
            if header_error is not None:
                raise fail(header_error, None, None)
            return Request(value, key, reply_to, correlation_id, deadline, stream, partition)
        try:
            decoded = self.loads(value)
        except DecodeError as exc:
            raise fail(exc, reply_to, correlation_id) from exc.__cause__
        # As in Faust, an envelope wins over reply headers: a value that is
        # a request envelope is unwrapped whatever the headers say.
        if _namespace(decoded) in (NS_REQUEST, NS_MODEL_REQUEST):
            try:
                reply_to, correlation_id = _address(
                    decoded.get("reply_to"), decoded.get("correlation_id")
                )
            except DecodeError as exc:
                raise fail(exc, None, None) from None
            decoded = decoded.get("value")
        elif header_error is not None:
            raise fail(header_error, None, None)
        try:
            result = self._hook(decoded)
        except DecodeError as exc:
            raise fail(exc, reply_to, correlation_id) from exc.__cause__
        return Request(result, key, reply_to, correlation_id, deadline, stream, partition)

    # -- replies --------------------------------------------------------

    def encode_reply(
        self,
        correlation_id: str,
        value: Any,
        *,
        key: Optional[bytes] = None,
        more: bool = False,
        end: bool = False,
        error: Optional[RemoteError] = None,
        request: Optional[Request] = None,
    ) -> Message:
        """Build a reply record (``@ReqRepResponse``, or Spring's form).

        Args:
            key: the request's key, echoed in the body.
            more: further replies to the same request follow.
            end: an end-of-stream marker (value null).
            error: the handler raised; the body's value describes it.
            request: the request answered: its wire decides the reply's
                format (a Spring caller's reply keeps the request key as
                its key and echoes its correlation id bytes) and its
                ``reply_partition`` the partition.
        """
        partition = None if request is None else request.reply_partition
        if request is not None and request.wire == "spring":
            return self._encode_spring_reply(request, value, more=more, end=end, error=error)
        headers: Headers = []
        if error is not None:
            value = {
                "type": error.type_name,
                "message": error.message,
                "traceback": error.remote_traceback,
            }
            headers.append((HEADER_ERROR, b"1"))
        else:
            value = self._jsonable(value)
        if more:
            headers.append((HEADER_MORE, b"1"))
        if end:
            headers.append((HEADER_END, b"1"))
        body = {
            "key": echo_key(key),
            "value": value,
            "correlation_id": correlation_id,
            "__faust": {"ns": NS_MODEL_RESPONSE if _is_record(value) else NS_RESPONSE},
        }
        return Message(None, self.dumps(body), headers, partition)

    def _encode_spring_reply(
        self, request: Request, value: Any, *, more: bool, end: bool, error: Optional[RemoteError]
    ) -> Message:
        """A reply as a Spring ``@SendTo`` listener writes it.

        The value itself (JSON; ``bytes`` pass as they are), the request's
        key and correlation id bytes; an error also carries Spring's
        ``kafka_exception-fqcn``/``kafka_exception-message`` headers.
        """
        cid = request.wire_correlation_id
        if cid is None:
            cid = (request.correlation_id or "").encode("utf-8")
        headers: Headers = [(SPRING_CORRELATION_ID, cid)]
        payload: Optional[bytes]
        if error is not None:
            headers += [
                (SPRING_EXCEPTION_FQCN, error.type_name.encode("utf-8")),
                (SPRING_EXCEPTION_MESSAGE, error.message.encode("utf-8")),
                (HEADER_ERROR, b"1"),
            ]
            payload = self.dumps(
                {"type": error.type_name, "message": error.message, "traceback": error.remote_traceback}
            )
        elif value is None or isinstance(value, bytes):
            payload = value
        else:
            payload = self.dumps(self._jsonable(value))
        if more:
            headers.append((HEADER_MORE, b"1"))
        if end:
            headers.append((HEADER_END, b"1"))
        return Message(request.key, payload, headers, request.reply_partition)

    def decode_reply_envelope(self, value: Optional[bytes], headers: Headers) -> Reply:
        """Read a reply record, leaving its value as plain JSON.

        The object hook is not applied: a reply is matched to its waiter by
        correlation id first, and only a reply somebody waits for has its
        value decoded, by :meth:`decode_reply_value`.

        Raises:
            DecodeError: not a ``@ReqRepResponse``-like JSON object with a
                non-empty string correlation id, or malformed headers.
        """
        named = _named(headers)
        if SPRING_CORRELATION_ID in named:
            return self._decode_spring_reply(value, named)
        if value is None:
            raise DecodeError("reply record has no value")
        body = self.loads(value)
        cid = body.get("correlation_id") if isinstance(body, dict) else None
        if not isinstance(cid, str) or not cid:
            raise DecodeError(f"not a reply (no correlation_id): {bytes(value[:80])!r}")
        if _header(named, HEADER_ERROR) is not None:
            return Reply(cid, None, error=_remote_error(body.get("value"), cid))
        return Reply(
            cid,
            body.get("value"),
            more=_header(named, HEADER_MORE) is not None,
            end=_header(named, HEADER_END) is not None,
        )

    def _decode_spring_reply(self, value: Optional[bytes], named: _Named) -> Reply:
        """Read a reply from a Spring listener (see :meth:`decode_reply_envelope`)."""
        raw_cid = _header(named, SPRING_CORRELATION_ID)
        cid = spring_correlation_text(raw_cid) if raw_cid else ""
        if not cid:
            raise DecodeError("Spring reply with an empty kafka_correlationId")
        fqcn = _header(named, SPRING_EXCEPTION_FQCN)
        if fqcn is not None:
            message = _header(named, SPRING_EXCEPTION_MESSAGE) or b""
            return Reply(cid, None, error=RemoteError(
                fqcn.decode("utf-8", "replace"), message.decode("utf-8", "replace"), correlation_id=cid
            ))
        return Reply(
            cid,
            _spring_value(value, self.value_serializer == "raw"),
            more=_header(named, HEADER_MORE) is not None,
            end=_header(named, HEADER_END) is not None,
        )

    def decode_reply_value(self, reply: Reply) -> Reply:
        """Apply the object hook to a reply read by :meth:`decode_reply_envelope`.

        Raises:
            DecodeError: the object hook raised.
        """
        if reply.error is not None or self._object_hook is None:
            return reply
        return reply._replace(value=self._hook(reply.value))

    def decode_reply(self, value: Optional[bytes], headers: Headers) -> Reply:
        """Read a reply record, value included.

        Raises:
            DecodeError: see :meth:`decode_reply_envelope` and
                :meth:`decode_reply_value`.
        """
        return self.decode_reply_value(self.decode_reply_envelope(value, headers))


def _remote_error(info: Any, correlation_id: str) -> RemoteError:
    """The :class:`RemoteError` an error reply's value describes.

    Takes whatever the value is: fields of the wrong type are shown, not
    trusted.
    """
    if not isinstance(info, dict):
        info = {"type": "Exception", "message": _short(info)}
    type_name = info.get("type", "Exception")
    message = info.get("message", "")
    trace = info.get("traceback")
    return RemoteError(
        type_name if isinstance(type_name, str) else _short(type_name),
        message if isinstance(message, str) else _short(message),
        remote_traceback=trace if isinstance(trace, str) else None,
        correlation_id=correlation_id,
    )


def _namespace(obj: Any) -> Optional[str]:
    """The ``__faust`` namespace of a JSON object, if it has one."""
    meta = obj.get("__faust") if isinstance(obj, dict) else None
    ns = meta.get("ns") if isinstance(meta, dict) else None
    return ns if isinstance(ns, str) else None


def _is_record(obj: Any) -> bool:
    """Whether ``obj`` is a Faust Record as JSON (or made to look like one)."""
    return _namespace(obj) is not None


def _deadline_of(named: _Named) -> Optional[float]:
    try:
        raw = _header(named, HEADER_DEADLINE)
        if raw is None:
            return None
        deadline = float(raw.decode("ascii"))
    except (DecodeError, UnicodeDecodeError, ValueError):
        return None  # a malformed deadline never stops a request
    return deadline if math.isfinite(deadline) else None


def _stream_of(named: _Named) -> bool:
    try:
        return _header(named, HEADER_STREAM) is not None
    except DecodeError:
        return True  # present, with a value of the wrong type


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    """The wall-clock deadline (``time.time()``) for a timeout in seconds."""
    return None if timeout is None else time.time() + timeout
