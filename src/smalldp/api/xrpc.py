"""XRPC plumbing: errors as `{"error", "message"}` JSON, parameter parsing, a never-500 guard."""

from __future__ import annotations

import logging
import re
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from smalldp.events import valid_did, valid_nsid
from smalldp.links import is_link
from smalldp.store.reader import BadCursor

log = logging.getLogger(__name__)
_INTEGER = re.compile(r"-?[0-9]{1,18}\Z")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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

    def subject(self, name: str) -> str:
        value = self.required(name)
        if not is_link(value):
            raise XrpcError(f"parameter {name!r} must be an at-uri, a DID or an absolute URL")
        return value

    def nsid(self, name: str) -> str:
        value = self.required(name, 317)
        if not valid_nsid(value):
            raise XrpcError(f"parameter {name!r} must be an NSID")
        return value

    def path(self, name: str, leading_dot: bool) -> str:
        """A Constellation path; returned with its leading dot."""
        value = self.required(name, 1024)
        if leading_dot:
            if not value.startswith(".") or len(value) < 2:
                raise XrpcError(f"parameter {name!r} must be a path starting with '.'")
            return value
        if value.startswith(".") or not value:
            raise XrpcError(f"parameter {name!r} must be a path without a leading '.'")
        return "." + value

    def source(self, name: str = "source") -> tuple[str, str]:
        """`collection:path` (path without its leading dot) -> (collection, '.path')."""
        value = self.required(name, 1400)
        collection, sep, path = value.partition(":")
        if not sep or not valid_nsid(collection) or not path or path.startswith("."):
            raise XrpcError(f"parameter {name!r} must be 'collection:path', e.g. 'app.bsky.feed.like:subject.uri'")
        return collection, "." + path

    def dids(self, name: str, max_items: int = 100) -> list[str]:
        return self._many(name, max_items, valid_did, "DIDs")

    def subjects(self, name: str, max_items: int = 100) -> list[str]:
        return self._many(name, max_items, is_link, "at-uris, DIDs or URLs")

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
