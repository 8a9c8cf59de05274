"""XRPC plumbing: errors as `{"error", "message"}` JSON, parameter parsing, a never-500 guard."""

from __future__ import annotations

import logging
import re
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from smalldp.events import valid_did
from smalldp.links import link_form
from smalldp.store.reader import BadCursor

log = logging.getLogger(__name__)
_INTEGER = re.compile(r"-?[0-9]{1,18}\Z")
_COUNT = re.compile(r"[0-9]{1,18}\Z")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Lenient parameters take values as long as the request line allows (server.MAX_REQUEST_LINE);
# repeated ones at most this many, so one request's work stays bounded.
MAX_REQUEST_VALUE = 64 * 1024
MAX_VALUES = 1000


class XrpcError(Exception):
    """An error answered as XRPC JSON."""

    def __init__(self, message: str, error: str = "InvalidRequest", status: int = 400) -> None:
        super().__init__(message)
        self.error = error
        self.message = message
        self.status = status


def json_response(body: object, status: int = 200) -> web.Response:
    """A JSON response encoded with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(error: str, message: str, status: int) -> web.Response:
    return json_response({"error": error, "message": message}, status)


@web.middleware
async def xrpc_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into XRPC JSON: bad input is a 400, never a 500."""
    try:
        return await handler(request)
    except XrpcError as exc:
        return error_response(exc.error, exc.message, exc.status)
    except BadCursor as exc:
        return error_response("InvalidRequest", str(exc), 400)
    except web.HTTPNotFound:
        if request.path.startswith("/xrpc/"):
            method = request.path[len("/xrpc/"):]
            return error_response("MethodNotImplemented", f"unknown method {method[:100]!r}", 501)
        return error_response("NotFound", f"no route {request.path[:100]!r}", 404)
    except web.HTTPMethodNotAllowed as exc:
        return error_response("InvalidRequest", f"method {request.method} not allowed here", exc.status)
    except web.HTTPException:
        raise
    except Exception:  # a bug: log it, answer in XRPC shape
        log.exception("internal error on %s", request.path_qs[:300])
        return error_response("InternalServerError", "internal error", 500)


class Params:
    """Typed access to query parameters, raising XrpcError with the parameter's name."""

    def __init__(self, request: web.Request) -> None:
        self.query = request.rel_url.query

    def string(self, name: str, required: bool = True, max_length: int = 4096) -> str | None:
        values = self.query.getall(name, [])
        if not values:
            if required:
                raise XrpcError(f"missing required parameter {name!r}")
            return None
        if len(values) > 1:
            raise XrpcError(f"parameter {name!r} given more than once")
        value = values[0]
        if len(value) > max_length:
            raise XrpcError(f"parameter {name!r} is too long")
        return value

    def required(self, name: str, max_length: int = 4096) -> str:
        value = self.string(name, True, max_length)
        assert value is not None
        return value

    def dids(self, name: str, max_items: int = 100) -> list[str]:
        return self._many(name, max_items, valid_did, "DIDs")

    def _many(self, name: str, max_items: int, valid: Callable[[str], bool], what: str) -> list[str]:
        """A repeatable parameter; every value must pass ``valid``."""
        values = self.query.getall(name, [])
        if len(values) > max_items:
            raise XrpcError(f"parameter {name!r} accepts at most {max_items} values")
        for value in values:
            if not valid(value):
                raise XrpcError(f"parameter {name!r} must be {what}, got {value[:80]!r}")
        return list(values)

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        raw = self.string(name, required=False, max_length=20)
        if raw is None:
            return default
        if not _INTEGER.match(raw):
            raise XrpcError(f"parameter {name!r} must be an integer")
        value = int(raw)
        if not minimum <= value <= maximum:
            raise XrpcError(f"parameter {name!r} must be between {minimum} and {maximum}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        raw = self.string(name, required=False, max_length=5)
        if raw is None:
            return default
        if raw in ("true", "1"):
            return True
        if raw in ("false", "0"):
            return False
        raise XrpcError(f"parameter {name!r} must be true or false")


class LenientParams(Params):
    """Query parameters the way Constellation reads them, for its routes only.

    Constellation answers odd but harmless values with zero results, so its clients
    send them: a value that names nothing (a subject that is not a link, a collection
    that is not an NSID, a path nobody uses, a DID that is not one) finds nothing, an
    empty repeated value is dropped. What cannot be read at all stays a 400: a missing
    required parameter, one given twice that is not repeatable, a ``source`` without
    ':', a limit that is not an integer in 0..max, an unparseable cursor (the reader's
    BadCursor). The DataPlane methods keep Params' strict checks.
    """

    def anything(self, name: str) -> str:
        """A required parameter, any string (the request line bounds its length)."""
        return self.required(name, MAX_REQUEST_VALUE)

    def target(self, name: str) -> str:
        """A link target in its stored form (``link_form``: generic URIs normalized).

        A value that is not a link comes back as it is: no stored target equals it, so
        it finds nothing, as in Constellation.
        """
        value = self.anything(name)
        return link_form(value) or value

    def source(self, name: str = "source") -> tuple[str, str]:
        """``collection:path`` -> (collection, '.path'), split at the first ':' and not
        checked further: an unknown collection or path finds nothing."""
        collection, sep, path = self.anything(name).partition(":")
        if not sep:
            raise XrpcError(f"parameter {name!r} must be 'collection:path', e.g. 'app.bsky.feed.like:subject.uri'")
        return collection, "." + path

    def values(self, name: str, max_items: int = MAX_VALUES) -> list[str]:
        """A repeatable parameter: each value trimmed, empty ones dropped. A value that
        names nothing is kept, so ``did=foo`` alone is a filter that matches nothing."""
        values = [v.strip() for v in self.query.getall(name, [])]
        values = [v for v in values if v]
        if len(values) > max_items:
            raise XrpcError(f"parameter {name!r} accepts at most {max_items} values")
        return values

    def targets(self, name: str, max_items: int = MAX_VALUES) -> list[str]:
        """Like ``values``, each in its stored form when it is a link (see ``target``)."""
        return [link_form(v) or v for v in self.values(name, max_items)]

    def limit(self, default: int, maximum: int) -> int:
        """0..maximum (0: an empty page); anything else is a 400, as in Constellation."""
        raw = self.string("limit", required=False, max_length=20)
        if raw is None:
            return default
        if not _COUNT.match(raw) or int(raw) > maximum:
            raise XrpcError(f"parameter 'limit' must be an integer between 0 and {maximum}")
        return int(raw)
