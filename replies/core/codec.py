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

Pure functions and plain data only: nothing here does I/O.
"""

from __future__ import annotations

import json
import time
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
    "REQUEST_MODES",
]

Headers = List[Tuple[str, bytes]]

HEADER_REPLY_TO = "Faust-Ag-ReplyTo"
HEADER_CORRELATION_ID = "Faust-Ag-CorrelationId"
HEADER_ERROR = "Replies-Error"
HEADER_MORE = "Replies-More"
HEADER_END = "Replies-End"
HEADER_DEADLINE = "Replies-Deadline"
HEADER_STREAM = "Replies-Stream"

NS_REQUEST = "@ReqRepRequest"
NS_RESPONSE = "@ReqRepResponse"
# Faust's envelopes around a Record value (a JSON object with "__faust").
NS_MODEL_REQUEST = "faust.agents.models.ModelReqRepRequest"
NS_MODEL_RESPONSE = "faust.agents.models.ModelReqRepResponse"

# What json.dumps encodes without calling ``default``.
_JSON_TYPES = (dict, list, tuple, str, int, float)

#: ``"headers"``: Faust >= 1.10's form; ``"envelope"``: older Faust's.
REQUEST_MODES = ("headers", "envelope")
VALUE_SERIALIZERS = ("json", "raw")


class Message(NamedTuple):
    """A record to produce: key, value and headers, all encoded."""

    key: Optional[bytes]
    value: Optional[bytes]
    headers: Headers


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


def _header(headers: Sequence[Tuple[str, Optional[bytes]]], name: str) -> Optional[bytes]:
    for key, value in headers:
        if key == name:
            return value if value is not None else b""
    return None


def _text(raw: Optional[bytes], what: str) -> Optional[str]:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} header is not UTF-8: {raw!r}") from exc


def echo_key(key: Optional[bytes]) -> Optional[str]:
    """The request key as a reply echoes it, in Faust's form.

    Faust writes ``str()`` of the raw key, e.g. ``"b'k1'"``; callers only
    need it for logs, and none should parse it.
    """
    return None if key is None else str(key)


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

    Raises:
        ValueError: an unknown serializer or request mode.
    """

    def __init__(
        self,
        *,
        value_serializer: str = "json",
        json_object_hook: Optional[Callable[[Dict[str, Any]], Any]] = None,
        json_default: Optional[Callable[[Any], Any]] = None,
        request_mode: str = "headers",
    ) -> None:
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
        self._object_hook = json_object_hook
        self._json_default = json_default

    # -- values and keys ------------------------------------------------

    def dumps(self, obj: Any) -> bytes:
        """JSON-encode ``obj`` compactly, as Faust writes it.

        Raises:
            TypeError: some part of ``obj`` cannot be encoded; the message
                names that part's type (not the envelope's around it).
        """
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
            DecodeError: not valid UTF-8 JSON.
        """
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"not valid JSON: {data[:80]!r}") from exc

    def _hook(self, obj: Any) -> Any:
        """Apply the object hook to every dict in ``obj``, innermost first.

        Only user values get the hook, never the envelope around them.
        """
        if self._object_hook is None:
            return obj
        if isinstance(obj, list):
            return [self._hook(item) for item in obj]
        if isinstance(obj, dict):
            return self._object_hook({k: self._hook(v) for k, v in obj.items()})
        return obj

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
        """Deserialize a request value with the value serializer."""
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
                headers += [
                    (HEADER_REPLY_TO, reply_to.encode("utf-8")),
                    (HEADER_CORRELATION_ID, correlation_id.encode("utf-8")),
                ]
        if deadline is not None:
            headers.append((HEADER_DEADLINE, repr(float(deadline)).encode("ascii")))
        if stream:
            headers.append((HEADER_STREAM, b"1"))
        return Message(self.encode_key(key), payload, headers)

    def decode_request(
        self, key: Optional[bytes], value: Optional[bytes], headers: Headers
    ) -> Request:
        """Read a request in either mode.

        Raises:
            DecodeError: the value or a header cannot be decoded. The error's
                ``request`` attribute holds what could be read (reply topic
                and correlation id from headers), so an agent can still send
                an error reply.
        """
        reply_to = _text(_header(headers, HEADER_REPLY_TO), HEADER_REPLY_TO)
        correlation_id = _text(_header(headers, HEADER_CORRELATION_ID), HEADER_CORRELATION_ID)
        deadline = _deadline_of(headers)
        stream = _header(headers, HEADER_STREAM) is not None
        try:
            if self.value_serializer == "raw" or value is None:
                return Request(value, key, reply_to, correlation_id, deadline, stream)
            decoded = self.loads(value)
        except DecodeError as exc:
            exc.request = Request(None, key, reply_to, correlation_id, deadline, stream)
            raise
        # As in Faust, an envelope wins over reply headers: a value that is
        # a request envelope is unwrapped whatever the headers say.
        if _namespace(decoded) in (NS_REQUEST, NS_MODEL_REQUEST):
            return Request(
                self._hook(decoded.get("value")),
                key,
                decoded.get("reply_to") or None,
                decoded.get("correlation_id") or None,
                deadline,
                stream,
            )
        return Request(self._hook(decoded), key, reply_to, correlation_id, deadline, stream)

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
    ) -> Message:
        """Build a reply record (``@ReqRepResponse``).

        Args:
            key: the request's key, echoed in the body.
            more: further replies to the same request follow.
            end: an end-of-stream marker (value null).
            error: the handler raised; the body's value describes it.
        """
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
        return Message(None, self.dumps(body), headers)

    def decode_reply(self, value: Optional[bytes], headers: Headers) -> Reply:
        """Read a reply record.

        Raises:
            DecodeError: not a ``@ReqRepResponse`` with a correlation id.
        """
        if value is None:
            raise DecodeError("reply record has no value")
        body = self.loads(value)
        if not isinstance(body, dict) or not isinstance(body.get("correlation_id"), str):
            raise DecodeError(f"not a reply (no correlation_id): {value[:80]!r}")
        cid: str = body["correlation_id"]
        if _header(headers, HEADER_ERROR) is not None:
            info = body.get("value")
            if not isinstance(info, dict):
                info = {"type": "Exception", "message": repr(info)}
            error = RemoteError(
                str(info.get("type", "Exception")),
                str(info.get("message", "")),
                remote_traceback=info.get("traceback"),
                correlation_id=cid,
            )
            return Reply(cid, None, error=error)
        return Reply(
            cid,
            self._hook(body.get("value")),
            more=_header(headers, HEADER_MORE) is not None,
            end=_header(headers, HEADER_END) is not None,
        )


def _namespace(obj: Any) -> Optional[str]:
    """The ``__faust`` namespace of a JSON object, if it has one."""
    meta = obj.get("__faust") if isinstance(obj, dict) else None
    ns = meta.get("ns") if isinstance(meta, dict) else None
    return ns if isinstance(ns, str) else None


def _is_record(obj: Any) -> bool:
    """Whether ``obj`` is a Faust Record as JSON (or made to look like one)."""
    return _namespace(obj) is not None


def _deadline_of(headers: Headers) -> Optional[float]:
    raw = _header(headers, HEADER_DEADLINE)
    if raw is None:
        return None
    try:
        return float(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None  # a malformed deadline never stops a request


def deadline_after(timeout: Optional[float]) -> Optional[float]:
    """The wall-clock deadline (``time.time()``) for a timeout in seconds."""
    return None if timeout is None else time.time() + timeout
