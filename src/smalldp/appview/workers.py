"""bsky.Service's store reads in worker processes (``rpc_processes``).

Why processes: the AppView sends a view's RPCs all at once, and on reader threads of the
serve process their handlers take turns at one interpreter lock with live ingest and the
event loop (gRPC and protobuf): measured at 10M events, RPCs that run in 0.01 ms waited
12-27 ms. A worker process holds its own ``DataPlaneReader`` (its own SQLite connection,
snapshot memo, summary and run-filter caches) and its own interpreter, so the reads run
beside ingest on another core.

**Lanes**: ``processes`` workers take the ordinary calls (each call to the one with the
fewest in flight); one more takes the bulk ones (``bulk=True``: a thread walk, a batch of
hundreds of posts), so that a big call does not hold up the small ones behind it (the same
split as the ReaderPool's bulk thread).

**Transport**: each worker is ``python -m smalldp.appview.workers`` with one end of a Unix
socket pair; calls are pipelined over it as length-prefixed frames and answered in order.
The serve side reads answers on its event loop (asyncio streams), so a call costs the
serve process one write and one read, with no thread hand-over: concurrent.futures'
ProcessPoolExecutor needs its manager thread to get the interpreter lock for every call,
and behind live ingest that capped a lane at ~200 calls/s (measured: the AppView sends
300 a second at 5 timelines/s).

**What crosses**: a sync handler's call is its method's name and the request's bytes; the
worker decodes, runs the registered handler, checks the answer's type and sends back its
bytes with the handler's own running time. An async handler's store read
(``AppViewContext.read``) is a module-level function and its arguments, pickled. Errors
come back as values: ``RpcError`` as its code and message; any other exception as its
traceback, which the dispatcher logs and answers ``internal``.

**Lifecycle**: workers start on the first call (a serve that answers no bsky.Service call
starts none: ~0.5 s of imports each, during which calls queue in the socket) and end when
``close`` closes their socket, or when the serve process ends, however it ends (the
socket's other end closes with it). One that dies (killed, out of memory) fails the calls
it held with ``unavailable`` (the AppView's client retries those), and the next call
starts a new worker, counted in ``restarts``. Workers ignore SIGINT (Ctrl-C reaches the
whole process group; the parent stops them).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar

from smalldp.appview.methods import METHODS, SERVICE
from smalldp.appview.rpcs.base import RpcError, SyncHandler
from smalldp.store.dataplane import DataPlaneReader
from smalldp.store.reader import BadCursor

log = logging.getLogger(__name__)
T = TypeVar("T")

OK, ERROR, BUG, CURSOR = "ok", "error", "bug", "cursor"
# (OK, value, seconds ran) | (ERROR, (code, message), seconds) | (BUG, traceback, seconds)
# | (CURSOR, message, seconds): a store read's BadCursor
Outcome = tuple[str, Any, float]
ANSWER, READ = 1, 2  # what a request frame asks: a sync handler's answer, an async handler's read
STATUS = {OK: 0, ERROR: 1, BUG: 2, CURSOR: 3}
STATUS_NAMES = {v: k for k, v in STATUS.items()}
REQUEST = struct.Struct("<IBI")  # call id, ANSWER or READ, payload bytes
RESPONSE = struct.Struct("<IBdI")  # call id, STATUS, seconds the worker ran it, payload bytes
STREAM_LIMIT = 1 << 24
STOP_WAIT_S = 5.0


class WorkerBug(Exception):
    """A worker's handler raised something other than RpcError; the message is its traceback."""


# ---- in the worker process --------------------------------------------------------------

_reader: DataPlaneReader | None = None
_sync: dict[str, SyncHandler] = {}


def _serve(sock: socket.socket, path: Path, cache_mb: int, mmap_mb: int) -> None:
    """A worker's life: open the reader, then answer frames until the socket closes."""
    global _reader, _sync
    from smalldp.appview.rpcs import handlers  # registers every family
    _sync = handlers()[0]
    _reader = DataPlaneReader(path, cache_mb=cache_mb, mmap_mb=mmap_mb)
    incoming: BinaryIO = sock.makefile("rb")
    while True:
        head = incoming.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return  # the serve process closed its end, or ended
        call, kind, size = REQUEST.unpack(head)
        payload = incoming.read(size)
        if len(payload) < size:
            return
        if kind == ANSWER:
            name_size = payload[0]
            status, value, ran = _answer(payload[1:1 + name_size].decode(), payload[1 + name_size:])
        else:
            status, value, ran = _read_pickled(payload)
        body = value if status == OK else _error_bytes(status, value)
        sock.sendall(RESPONSE.pack(call, STATUS[status], ran, len(body)) + body)


def _error_bytes(status: str, value: Any) -> bytes:
    return json.dumps(list(value) if status == ERROR else value).encode()


def main(argv: list[str]) -> int:
    """``python -m smalldp.appview.workers FD PATH CACHE_MB MMAP_MB SYS_PATH_JSON``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, path, cache_mb, mmap_mb, paths = argv
    sys.path[:] = json.loads(paths)  # the serve process's: functions it names are importable here
    sock = socket.socket(fileno=int(fd))
    try:
        _serve(sock, Path(path), int(cache_mb), int(mmap_mb))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the serve process went away mid-answer
    return 0


def _answer(method: str, raw: bytes) -> Outcome:
    """Run bsky.Service/``method``'s sync handler on the request ``raw``; its answer's bytes."""
    started = time.perf_counter()
    try:
        known = METHODS[method]
        handler = _sync[method]
        try:
            request = known.request.FromString(raw)
        except Exception as exc:  # the dispatcher decoded these bytes already: not expected
            raise RpcError("invalid_argument", f"not a valid {known.request.DESCRIPTOR.full_name}: {exc}"[:300])
        assert _reader is not None
        response = handler(_reader, request)
        if not isinstance(response, known.response):
            raise TypeError(f"the handler answered a {type(response).__name__}, not a {known.response.__name__}")
        return OK, response.SerializeToString(), time.perf_counter() - started
    except RpcError as exc:
        return ERROR, (exc.code, exc.message), time.perf_counter() - started
    except Exception:
        return BUG, traceback.format_exc(), time.perf_counter() - started


def _read_pickled(payload: bytes) -> Outcome:
    """``_read`` of a pickled (function, arguments), its result pickled."""
    try:
        fn, args = pickle.loads(payload)
    except Exception:
        return BUG, traceback.format_exc(), 0.0
    status, value, ran = _read(fn, args)
    if status != OK:
        return status, value, ran
    try:
        return OK, pickle.dumps(value, pickle.HIGHEST_PROTOCOL), ran
    except Exception:
        return BUG, traceback.format_exc(), ran


def _read(fn: Callable[..., Any], args: tuple[Any, ...]) -> Outcome:
    """``fn(reader, *args)``, for an async handler's store read or an XRPC method's."""
    started = time.perf_counter()
    try:
        assert _reader is not None
        return OK, fn(_reader, *args), time.perf_counter() - started
    except RpcError as exc:
        return ERROR, (exc.code, exc.message), time.perf_counter() - started
    except BadCursor as exc:  # an XRPC method's 400
        return CURSOR, str(exc), time.perf_counter() - started
    except Exception:
        return BUG, traceback.format_exc(), time.perf_counter() - started


# ---- in the serve process ----------------------------------------------------------------

class _Worker:
    """One worker process and the calls it holds."""

    def __init__(self, proc: subprocess.Popen[bytes], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.proc, self._reader, self._writer = proc, reader, writer
        self.pending: dict[int, asyncio.Future[tuple[int, float, bytes]]] = {}
        self.alive = True
        self.closing = False
        self._ids = itertools.count(1)
        self._answers = asyncio.ensure_future(self._read_answers())

    @classmethod
    async def start(cls, initargs: tuple[str, int, int]) -> "_Worker":
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "smalldp.appview.workers", str(theirs.fileno()), *map(str, initargs),
                 json.dumps(sys.path)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()  # only the worker holds its end: it sees EOF when we close or end
        reader, writer = await asyncio.open_unix_connection(sock=mine, limit=STREAM_LIMIT)
        return cls(proc, reader, writer)

    async def call(self, kind: int, payload: bytes) -> tuple[int, float, bytes]:
        if not self.alive:
            raise RpcError("unavailable", f"{SERVICE}: a worker process ended while answering; retry")
        call = next(self._ids)
        future: asyncio.Future[tuple[int, float, bytes]] = asyncio.get_running_loop().create_future()
        self.pending[call] = future
        self._writer.write(REQUEST.pack(call, kind, len(payload)) + payload)
        try:
            return await future
        finally:
            self.pending.pop(call, None)

    async def _read_answers(self) -> None:
        try:
            while True:
                call, status, ran, size = RESPONSE.unpack(await self._reader.readexactly(RESPONSE.size))
                body = await self._reader.readexactly(size)
                future = self.pending.pop(call, None)
                if future is not None and not future.done():  # gone: its caller was cancelled
                    future.set_result((status, ran, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.alive = False
            if not self.closing:
                log.error("an RPC worker process (pid %d) ended; %d calls in flight answer unavailable",
                          self.proc.pid, len(self.pending))
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(RpcError(
                        "unavailable", f"{SERVICE}: a worker process ended while answering; retry"))
            self.pending.clear()

    async def close(self) -> None:
        self.closing = True
        self._writer.close()  # the worker reads EOF and exits
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(None, self.proc.wait), STOP_WAIT_S)
        except TimeoutError:
            self.proc.kill()
            await loop.run_in_executor(None, self.proc.wait)
        self._answers.cancel()


class _Lane:
    """Up to ``processes`` workers; a call goes to the one with the fewest in flight."""

    def __init__(self, name: str, processes: int, initargs: tuple[str, int, int]) -> None:
        self.name, self.processes, self._initargs = name, processes, initargs
        self._workers: list[_Worker] = []
        self._starting: asyncio.Task[_Worker] | None = None
        self.started = 0
        self.closed = False

    @property
    def restarts(self) -> int:
        return max(0, self.started - self.processes)

    async def worker(self) -> _Worker:
        if self.closed:
            raise RpcError("unavailable", f"{SERVICE}: the service is stopping")
        self._workers = [w for w in self._workers if w.alive]
        if len(self._workers) >= self.processes or (self._workers and self._starting is not None):
            return min(self._workers, key=lambda w: len(w.pending))
        if self._starting is None:  # one start at a time; callers meanwhile wait for it
            self._starting = asyncio.ensure_future(_Worker.start(self._initargs))
            self.started += 1
        starting = self._starting
        try:
            worker = await asyncio.shield(starting)
        finally:
            if self._starting is starting and starting.done():
                self._starting = None
        if worker not in self._workers:
            self._workers.append(worker)
        return worker

    async def call(self, kind: int, payload: bytes) -> tuple[int, float, bytes]:
        return await (await self.worker()).call(kind, payload)

    def pids(self) -> list[int]:
        return sorted(w.proc.pid for w in self._workers if w.alive)

    async def close(self) -> None:
        self.closed = True
        if self._starting is not None:
            try:
                self._workers.append(await self._starting)
            except Exception:
                pass
        workers, self._workers = self._workers, []
        await asyncio.gather(*(w.close() for w in workers))


class RpcWorkers:
    """Worker processes answering sync handlers and async handlers' reads (module docstring)."""

    def __init__(self, path: Path, processes: int = 1, *, cache_mb: int = 64, mmap_mb: int = 0) -> None:
        if processes < 1:
            raise ValueError("RpcWorkers needs at least one process")
        initargs = (str(path), cache_mb, mmap_mb)
        self._small = _Lane("small", processes, initargs)
        self._bulk = _Lane("bulk", 1, initargs)

    async def answer(self, method: str, raw: bytes, *, bulk: bool = False, ran: list[float] | None = None) -> bytes:
        """The answer's bytes of bsky.Service/``method``'s sync handler (the seconds it ran
        appended to ``ran``); RpcError as the handler raised it, WorkerBug for anything
        else it raised."""
        name = method.encode()
        status, seconds, body = await (self._bulk if bulk else self._small).call(
            ANSWER, bytes([len(name)]) + name + raw)
        if ran is not None:
            ran.append(seconds)
        return body if status == STATUS[OK] else _unwrap(STATUS_NAMES[status], json.loads(body))  # type: ignore[no-any-return]

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(reader, *args)`` on a worker: ``fn`` a module-level function, it and its
        arguments and result picklable."""
        status, _, body = await self._small.call(READ, pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL))
        if status == STATUS[OK]:
            return pickle.loads(body)  # type: ignore[no-any-return]
        return _unwrap(STATUS_NAMES[status], json.loads(body))  # type: ignore[no-any-return]

    async def warm(self) -> list[int]:
        """Start every worker now (each lane's processes) and return their pids."""
        for lane in (self._small, self._bulk):
            while len(lane.pids()) < lane.processes:
                await lane.worker()
        return self._small.pids() + self._bulk.pids()

    def health(self) -> dict[str, object]:
        """For /xrpc/_health's ``grpc.workers``."""
        return {lane.name: {"processes": lane.processes, "pids": lane.pids(), "restarts": lane.restarts}
                for lane in (self._small, self._bulk)}

    async def close(self) -> None:
        """Stop the workers: their sockets closed, calls in flight answer unavailable."""
        await asyncio.gather(self._small.close(), self._bulk.close())


def _unwrap(kind: str, value: Any) -> Any:
    if kind == OK:
        return value
    if kind == ERROR:
        code, message = value
        raise RpcError(code, message)
    if kind == CURSOR:
        raise BadCursor(value)
    raise WorkerBug(value)


def reader_method(dp: DataPlaneReader, name: str, *args: Any) -> Any:
    """``dp.<name>(*args)``: a public query method of the reader, by name (how the XRPC
    routes name their read to a worker without a lambda, which does not pickle)."""
    if name.startswith("_"):
        raise ValueError(f"not a query method: {name!r}")
    return getattr(dp, name)(*args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
