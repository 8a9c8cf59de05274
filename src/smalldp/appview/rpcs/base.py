"""What every RPC family shares: the registry, the error type, the context.

A **sync handler** ``fn(dp, request) -> response`` runs on a reader thread (the server's
ReaderPool, as the XRPC routes do) with a ``DataPlaneReader`` and the decoded request
message; it must bound its work and may raise ``RpcError``.  An **async handler**
``fn(ctx, request) -> response`` runs on the event loop with the ``AppViewContext`` (for
work that waits on the network, such as resolving a DID document); it reaches the store
through ``ctx.read(fn, *args)``, ``fn`` a module-level function of the reader (it may run in
a worker process).

Errors: ``RpcError(code, message)`` with a gRPC status code name in lower case
(``invalid_argument``, ``not_found``, ``unimplemented``, ...), the message saying what was
wrong with which field.  Anything else raised is a bug: the server logs it and answers
``internal`` (never for bad input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from google.protobuf.message import Message

from smalldp.store.dataplane import DataPlaneReader

_T = TypeVar("_T")
SyncHandler = Callable[[DataPlaneReader, Any], Message]
AsyncHandler = Callable[["AppViewContext", Any], Awaitable[Message]]
SYNC_HANDLERS: dict[str, SyncHandler] = {}
ASYNC_HANDLERS: dict[str, AsyncHandler] = {}

CODES = frozenset({
    "cancelled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists",
    "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
    "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated",
})


class RpcError(Exception):
    """An RPC answered with a gRPC status: ``code`` one of ``CODES``."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"not a gRPC status code name: {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


class Reads(Protocol):
    """Runs ``fn(reader, *args)`` with a DataPlaneReader: in an RPC worker process
    (``appview.workers``: ``fn`` must then be a module-level function, and it, ``args`` and
    its result picklable) or on a reader thread (api.readers.ReaderPool.run)."""

    def __call__(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]: ...


@dataclass
class AppViewContext:
    """What async handlers get: the store through ``read``, and named services (such as
    ``identity``, the DID document cache) that the server sets up."""

    read: Reads
    services: dict[str, Any]


def rpc(method: str) -> Callable[[SyncHandler], SyncHandler]:
    """Register a sync handler for bsky.Service/``method``."""
    def register(fn: SyncHandler) -> SyncHandler:
        if method in SYNC_HANDLERS or method in ASYNC_HANDLERS:
            raise RuntimeError(f"bsky.Service/{method} has two handlers")
        SYNC_HANDLERS[method] = fn
        return fn
    return register


def async_rpc(method: str) -> Callable[[AsyncHandler], AsyncHandler]:
    """Register an async handler for bsky.Service/``method``."""
    def register(fn: AsyncHandler) -> AsyncHandler:
        if method in SYNC_HANDLERS or method in ASYNC_HANDLERS:
            raise RuntimeError(f"bsky.Service/{method} has two handlers")
        ASYNC_HANDLERS[method] = fn
        return fn
    return register
