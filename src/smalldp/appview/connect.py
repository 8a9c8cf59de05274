"""bsky.Service over Connect unary on the main HTTP port, for curl and browsers.

``POST /bsky.Service/<Method>`` with the request message as the body, the same handlers
and the same dispatch as gRPC (``grpc_server.Dispatcher``). What the Connect protocol
(connectrpc.com/docs/protocol, unary) asks of a server, as this one does it:

* ``Content-Type: application/json`` (``; charset=utf-8`` allowed): proto3 JSON mapping
  (google.protobuf.json_format: lowerCamelCase or proto field names, bytes as base64;
  unknown fields are an error, as a typo should be); answered in JSON, default values
  left out. ``application/proto``: binary, answered in binary. An empty body is the
  empty message. Anything else (streaming ``application/connect+*`` included) is
  **415** with ``Accept-Post`` naming the two.
* Errors: the HTTP status of the code (the spec's table: invalid_argument 400,
  not_found 404, resource_exhausted 429, unimplemented 501, internal 500, ...), a JSON
  body ``{"code": "invalid_argument", "message": "..."}``. A method bsky.Service does
  not have is **404** ``unimplemented`` (a path that names nothing); one it has and
  smalldp does not answer is 501 ``unimplemented``, named.
* ``Connect-Protocol-Version``: optional; any value but ``1`` is invalid_argument.
  ``Connect-Timeout-Ms``: honoured (deadline_exceeded past it; not digits:
  invalid_argument). ``Content-Encoding`` other than ``identity``: unimplemented (no
  request compression; ``Accept-Encoding: identity`` says so). GET (the protocol's
  option for side-effect-free methods) is not offered: 405.
* Bodies above ``MAX_MESSAGE_BYTES`` (4 MiB, as gRPC's cap): resource_exhausted (429),
  read no further.
"""

from __future__ import annotations

import logging
import re

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from smalldp.appview.grpc_server import MAX_MESSAGE_BYTES, METHODS, UNKNOWN_METHOD, Decoder, Dispatcher, decode_proto
from smalldp.appview.rpcs.base import RpcError

log = logging.getLogger(__name__)
DISPATCHER = web.AppKey("rpc_dispatcher", Dispatcher)
PATH_PREFIX = "/bsky.Service/"
ACCEPT_POST = "application/json, application/proto"
_JSON = re.compile(r"application/json(?:; ?charset=utf-?8)?\Z", re.IGNORECASE)
_PROTO = re.compile(r"application/proto\Z", re.IGNORECASE)
_TIMEOUT = re.compile(r"[0-9]{1,10}\Z")
READ_CHUNK = 64 * 1024

# connectrpc.com/docs/protocol#error-codes
HTTP_STATUS = {
    "cancelled": 499, "unknown": 500, "invalid_argument": 400, "deadline_exceeded": 504, "not_found": 404,
    "already_exists": 409, "permission_denied": 403, "resource_exhausted": 429, "failed_precondition": 400,
    "aborted": 409, "out_of_range": 400, "unimplemented": 501, "internal": 500, "unavailable": 503,
    "data_loss": 500, "unauthenticated": 401,
}


def setup(app: web.Application, dispatcher: Dispatcher) -> None:
    """Answer ``POST /bsky.Service/<Method>`` in ``app`` with ``dispatcher``."""
    app[DISPATCHER] = dispatcher
    app.router.add_post(PATH_PREFIX + "{method}", handle)


def decode_json(raw: bytes) -> Decoder:
    """A decoder of the proto3 JSON mapping: ``invalid_argument`` for anything else."""
    def decode(cls: type[Message]) -> Message:
        message = cls()
        if not raw.strip():
            return message
        try:
            json_format.Parse(raw.decode("utf-8"), message)
        except (json_format.ParseError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise RpcError("invalid_argument",
                           f"not a valid {cls.DESCRIPTOR.full_name} in JSON: {exc}"[:300]) from None
        return message
    return decode


def error_response(code: str, message: str, status: int | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """A Connect unary error: the code's HTTP status (or ``status``), JSON code and message."""
    return web.Response(body=orjson.dumps({"code": code, "message": message}),
                        status=status or HTTP_STATUS.get(code, 500), content_type="application/json",
                        headers=headers)


async def handle(request: web.Request) -> web.Response:
    """One Connect unary call (see the module docstring)."""
    dispatcher = request.app[DISPATCHER]
    method = request.match_info["method"]
    if method not in METHODS:  # 404: the path names nothing (as a Connect router answers)
        dispatcher.metrics.record("connect", UNKNOWN_METHOD, "unimplemented", 0.0)
        return error_response("unimplemented", f"{method[:200]!r} is not a method of bsky.Service", 404)
    binary = _codec(request.headers.get("Content-Type", ""))
    if binary is None:
        return web.Response(status=415, text=f"Content-Type must be one of {ACCEPT_POST}\n",
                            headers={"Accept-Post": ACCEPT_POST})
    try:
        timeout = _headers(request)
        raw = await _body(request)
        decode = decode_proto(raw) if binary else decode_json(raw)
        response: Message | bytes
        if binary:
            response = await dispatcher.call_bytes(method, decode, "connect", timeout=timeout)
        else:
            response = await dispatcher.call(method, decode, "connect", timeout=timeout)
    except _PreDispatch as exc:
        dispatcher.metrics.record("connect", method, exc.code, 0.0)
        return error_response(exc.code, exc.message,
                              headers={"Accept-Encoding": "identity"} if exc.accept_encoding else None)
    except RpcError as exc:  # counted by the dispatcher
        return error_response(exc.code, exc.message)
    except ConnectionResetError:  # the client went away while sending: nobody to answer
        return error_response("cancelled", "connection lost")
    except Exception:
        log.exception("Connect %s: internal error", method)
        return error_response("internal", "internal error (logged)")
    if isinstance(response, bytes):
        return web.Response(body=response, content_type="application/proto")
    return web.Response(body=orjson.dumps(json_format.MessageToDict(response)), content_type="application/json")


def _codec(content_type: str) -> bool | None:
    """True for binary, False for JSON, None for a type Connect unary does not use."""
    value = content_type.strip()
    if _PROTO.match(value):
        return True
    if _JSON.match(value):
        return False
    return None


class _PreDispatch(RpcError):
    """An error found before dispatch (headers, body): counted here, not by the dispatcher."""

    def __init__(self, code: str, message: str, accept_encoding: bool = False) -> None:
        super().__init__(code, message)
        self.accept_encoding = accept_encoding


def _headers(request: web.Request) -> float | None:
    """Check the Connect request headers; the timeout in seconds, or None."""
    version = request.headers.get("Connect-Protocol-Version")
    if version is not None and version != "1":
        raise _PreDispatch("invalid_argument", f'Connect-Protocol-Version must be "1": got {version[:20]!r}')
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":
        raise _PreDispatch("unimplemented", f"unknown compression {encoding[:40]!r}: supported encodings "
                                            "are identity", accept_encoding=True)
    timeout = request.headers.get("Connect-Timeout-Ms")
    if timeout is None:
        return None
    if not _TIMEOUT.match(timeout):
        raise _PreDispatch("invalid_argument", f"protocol error: invalid connect timeout value: {timeout[:20]!r}")
    return int(timeout) / 1000


async def _body(request: web.Request) -> bytes:
    """The request body, at most MAX_MESSAGE_BYTES (resource_exhausted past it)."""
    too_big = _PreDispatch("resource_exhausted", f"request body larger than {MAX_MESSAGE_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_MESSAGE_BYTES:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)

