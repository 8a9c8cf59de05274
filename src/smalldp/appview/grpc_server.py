"""bsky.Service served: the dispatch both transports share, its counters, and the gRPC server.

**Dispatch** (``Dispatcher.call``): one RPC, whatever carried it (gRPC here, Connect in
``connect.py``). It bounds the RPCs in flight (``MAX_IN_FLIGHT``, both transports together:
past it, ``resource_exhausted`` at once rather than a queue that grows without end), marks
the query gate (live ingest steps aside, as for HTTP queries), decodes the request with the
transport's decoder (bad bytes or JSON: ``invalid_argument``), runs the registered handler
(``smalldp.appview.rpcs``): a sync one on the ReaderPool's threads (big requests, ``is_bulk``,
on its bulk thread, so they do not hold up the small ones queued behind them), an async one on the loop
with the ``AppViewContext``; a method of bsky.Service with no handler is ``unimplemented``,
named. ``RpcError`` is the answer's status; anything else is a bug: logged with the method's
name, counted, answered ``internal``. Every call is counted by transport, method and code.

**Latency quantiles** (``RpcMetrics``): the durations of each method's last
``LATENCY_WINDOW`` answered calls (both transports, errors included: they took that long;
calls refused by the in-flight bound and paths outside bsky.Service left out) are kept in a
ring per method. ``/xrpc/_health``'s ``grpc.methods`` gives per method its calls so far, the
ring's size and its p50/p99 in ms; ``/metrics`` the same quantiles as gauges,
``smalldp_rpc_recent_seconds{method,quantile}`` (of recent calls, not all time; the totals
are ``smalldp_rpc_seconds_total`` and ``smalldp_rpc_calls_total``). A quantile is the
nearest-rank value ``sorted[min(n - 1, int(n * q))]``, as the benchmarks take theirs.
For a sync handler, a second ring holds the time the handler itself ran on its reader
thread (``run_p50_ms``/``run_p99_ms``; ``smalldp_rpc_recent_run_seconds``): the rest of a
call's time is waiting, mostly for that thread (the ReaderPool has one by default, and the
AppView sends a view's RPCs all at once). The rings are sorted per health poll or scrape:
2.6 ms with 40 methods' two rings full (this machine).

**gRPC** (``GrpcServer``): grpc.aio on the service's event loop, HTTP/2 cleartext (what the
official AppView's client speaks by default; grpc.aio has no HTTP/1.1, README-dev.md: the
spike). One generic handler answers every path: the 108 methods read from
``bsky_pb2.DESCRIPTOR`` take raw bytes (decoded in dispatch, so a corrupt message is
INVALID_ARGUMENT, not grpc's UNKNOWN), any other path is UNIMPLEMENTED naming it.

* Requests are capped at ``MAX_MESSAGE_BYTES`` (4 MiB, grpc's own default, kept explicit):
  the AppView's biggest requests are batches of a few hundred at-uris or DIDs (tens of KB),
  so this is ~100x headroom while bounding what one call can make the server hold
  (``MAX_IN_FLIGHT`` x 4 MiB at worst). Bigger ones get grpc's RESOURCE_EXHAUSTED before
  any handler runs. Responses are not capped (they are ours).
* ``grpc.so_reuseport`` is off: with grpc's default (on), a second ``smalldp serve`` on the
  same port would bind silently and the kernel would split the AppView's calls between the
  two. Off, the bind fails and the service stops with a message naming the address.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, TypeVar, cast

import grpc
from google.protobuf.message import DecodeError, Message

from smalldp.api.readers import ReaderPool, read_store
from smalldp.appview.methods import METHODS, SERVICE, Method
from smalldp.appview.rpcs import handlers
from smalldp.appview.rpcs.base import AppViewContext, AsyncHandler, RpcError, SyncHandler
from smalldp.appview.workers import RpcWorkers, WorkerBug
from smalldp.priority import QueryGate
from smalldp.store.dataplane import DataPlaneReader

log = logging.getLogger(__name__)
T = TypeVar("T")
Sample = tuple[str, str, str, float]  # as smalldp.api.metrics.Sample

MAX_MESSAGE_BYTES = 4 << 20
MAX_IN_FLIGHT = 512
STOP_GRACE_S = 2.0
UNKNOWN_METHOD = "(unknown)"  # the metrics' method label for paths outside bsky.Service
GRPC_CODES: dict[str, grpc.StatusCode] = {code.name.lower(): code for code in grpc.StatusCode}
# Calls run on the ReaderPool's bulk thread: methods whose one item can mean a big walk,
# and any request with more than BULK_ITEMS items in its repeated fields.
BULK_METHODS = frozenset({"GetThread", "GetNotifications"})
BULK_ITEMS = 100
LATENCY_WINDOW = 512  # durations kept per method for its quantiles (the most recent calls)
QUANTILES = (0.5, 0.99)


Decoder = Callable[[type[Message]], Message]


def decode_proto(raw: bytes) -> Decoder:
    """A decoder of binary protobuf: ``invalid_argument`` for bytes that are not the message."""
    def decode(cls: type[Message]) -> Message:
        try:
            return cls.FromString(raw)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise RpcError("invalid_argument",
                           f"not a valid {cls.DESCRIPTOR.full_name}: {exc}"[:300]) from None
    return decode


@dataclass
class RpcMetrics:
    """What the RPC transports count, for /xrpc/_health and /metrics (updated on the loop)."""

    listen: str = "off"  # the gRPC address bound ("off": none)
    state: str = "off"  # off, serving, stopped
    in_flight: int = 0
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)  # (transport, method)
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (transport, code), errors only
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # per method
    # the durations of each method's last LATENCY_WINDOW answered calls (seconds), and of
    # a sync handler's own run on its reader thread
    recent: dict[str, deque[float]] = field(default_factory=dict)
    recent_run: dict[str, deque[float]] = field(default_factory=dict)

    def record(self, transport: str, method: str, code: str, seconds: float, *, timed: bool = True,
               ran: float | None = None) -> None:
        """One finished call (``code`` "ok" or an error code); ``timed`` False for a call
        refused before it ran (its duration says nothing about answering); ``ran`` the
        seconds a sync handler ran on its thread, when it did."""
        self.calls[(transport, method)] += 1
        if code != "ok":
            self.codes[(transport, code)] += 1
        self.seconds[method] += seconds
        if timed and method != UNKNOWN_METHOD:
            _ring(self.recent, method).append(seconds)
            if ran is not None:
                _ring(self.recent_run, method).append(ran)

    def quantiles(self, run: bool = False) -> dict[str, tuple[int, list[float]]]:
        """Per method with timed calls: (calls in the ring, [seconds at each of QUANTILES]);
        ``run``: of the handlers' own runs."""
        out: dict[str, tuple[int, list[float]]] = {}
        for method, ring in sorted((self.recent_run if run else self.recent).items()):
            values = sorted(ring)
            n = len(values)
            out[method] = (n, [values[min(n - 1, int(n * q))] for q in QUANTILES])
        return out

    def health(self) -> dict[str, object]:
        """The ``grpc`` part of /xrpc/_health."""
        errors: Counter[str] = Counter()
        for (_, code), n in self.codes.items():
            errors[code] += n
        by_transport: Counter[str] = Counter()
        by_method: Counter[str] = Counter()
        for (transport, method), n in self.calls.items():
            by_transport[transport] += n
            by_method[method] += n
        methods: dict[str, dict[str, float]] = {
            method: {"calls": by_method[method], "window": n,
                     "p50_ms": round(q[0] * 1000, 3), "p99_ms": round(q[1] * 1000, 3)}
            for method, (n, q) in self.quantiles().items()}
        for method, (_, q) in self.quantiles(run=True).items():
            methods[method].update(run_p50_ms=round(q[0] * 1000, 3), run_p99_ms=round(q[1] * 1000, 3))
        return {"listen": self.listen, "state": self.state, "in_flight": self.in_flight,
                "calls": by_transport.get("grpc", 0), "connect_calls": by_transport.get("connect", 0),
                "errors": dict(sorted(errors.items())), "methods": methods}

    def samples(self) -> list[Sample]:
        """Prometheus samples; labelled ones share their metric's HELP and TYPE."""
        out: list[Sample] = [
            ("smalldp_grpc_serving", "gauge", "1 while the gRPC server (grpc_listen) accepts calls.",
             1.0 if self.state == "serving" else 0.0),
            ("smalldp_rpc_in_flight", "gauge", "bsky.Service calls being answered (gRPC and Connect).",
             float(self.in_flight))]
        for (transport, method), n in sorted(self.calls.items()):
            out.append((f'smalldp_rpc_calls_total{{transport="{transport}",method="{method}"}}', "counter",
                        "bsky.Service calls answered, by transport and method.", float(n)))
        for (transport, code), n in sorted(self.codes.items()):
            out.append((f'smalldp_rpc_errors_total{{transport="{transport}",code="{code}"}}', "counter",
                        "bsky.Service calls answered with an error, by transport and status code.", float(n)))
        for method, s in sorted(self.seconds.items()):
            out.append((f'smalldp_rpc_seconds_total{{method="{method}"}}', "counter",
                        "Time spent answering bsky.Service calls, by method.", s))
        for method, (_, values) in self.quantiles().items():
            for q, value in zip(QUANTILES, values):
                out.append((f'smalldp_rpc_recent_seconds{{method="{method}",quantile="{q:g}"}}', "gauge",
                            f"bsky.Service answer time, quantiles of each method's last {LATENCY_WINDOW} calls.",
                            value))
        for method, (_, values) in self.quantiles(run=True).items():
            for q, value in zip(QUANTILES, values):
                out.append((f'smalldp_rpc_recent_run_seconds{{method="{method}",quantile="{q:g}"}}', "gauge",
                            "Time a sync bsky.Service handler ran on its reader thread (waiting for the thread "
                            f"excluded), quantiles of each method's last {LATENCY_WINDOW} calls.", value))
        return out


def _ring(rings: dict[str, deque[float]], method: str) -> deque[float]:
    """``rings[method]``, made when missing."""
    ring = rings.get(method)
    if ring is None:
        ring = rings[method] = deque(maxlen=LATENCY_WINDOW)
    return ring


class Dispatcher:
    """Answers bsky.Service calls with the registered handlers (see the module docstring)."""

    def __init__(self, pool: ReaderPool, *, gate: QueryGate | None = None,
                 services: dict[str, Any] | None = None, max_in_flight: int = MAX_IN_FLIGHT,
                 registry: tuple[dict[str, SyncHandler], dict[str, AsyncHandler]] | None = None,
                 workers: RpcWorkers | None = None) -> None:
        if workers is not None and registry is not None:
            raise ValueError("worker processes answer with the registered handlers, not a given registry")
        self.pool = pool
        self.workers = workers
        self.gate = gate
        self.max_in_flight = max_in_flight
        self.sync, self.async_ = registry if registry is not None else handlers()
        self.context = AppViewContext(read=self.read, services=dict(services or {}))
        self.metrics = RpcMetrics()

    def health(self) -> dict[str, object]:
        """The ``grpc`` part of /xrpc/_health: the calls' counters and, with worker
        processes, their lanes (``workers``: processes, pids, restarts; None without)."""
        return {**self.metrics.health(), "workers": None if self.workers is None else self.workers.health()}

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(reader, *args)`` with a DataPlaneReader (``api.readers.read_store``)."""
        return await read_store(self.pool, self.workers, fn, *args)

    async def call(self, method: str, decode: Decoder, transport: str, timeout: float | None = None) -> Message:
        """Answer bsky.Service/``method`` (within ``timeout`` seconds, if given: else
        deadline_exceeded); raises RpcError (counted) for every failure."""
        answer = await self._call(method, decode, transport, timeout)
        return METHODS[method].response.FromString(answer) if isinstance(answer, bytes) else answer

    async def call_bytes(self, method: str, decode: Decoder, transport: str, timeout: float | None = None) -> bytes:
        """As ``call``, the answer serialized (a worker's answer is not decoded and encoded again)."""
        answer = await self._call(method, decode, transport, timeout)
        return answer if isinstance(answer, bytes) else bytes(answer.SerializeToString())

    async def _call(self, method: str, decode: Decoder, transport: str, timeout: float | None) -> Message | bytes:
        started = time.perf_counter()
        metrics = self.metrics
        known = METHODS.get(method)
        code = "ok"
        ran: list[float] = []  # a sync handler's own running time, appended by its thread
        if metrics.in_flight >= self.max_in_flight:
            metrics.record(transport, method if known else UNKNOWN_METHOD, "resource_exhausted", 0.0, timed=False)
            raise RpcError("resource_exhausted", f"more than {self.max_in_flight} bsky.Service calls in flight")
        metrics.in_flight += 1
        if self.gate is not None:
            self.gate.enter()
        try:
            if known is None:
                raise RpcError("unimplemented", f"{method[:200]!r} is not a method of {SERVICE}")
            request = decode(known.request)
            async with asyncio.timeout(timeout) as deadline:
                try:
                    response = await self._answer(known, request, ran)
                except asyncio.CancelledError:
                    if deadline.expired():
                        raise RpcError("deadline_exceeded", f"{SERVICE}/{method}: no answer within "
                                                            f"{timeout} s") from None
                    raise
            if not isinstance(response, (known.response, bytes)):  # bytes: a worker checked them
                raise TypeError(f"the handler answered a {type(response).__name__}, "
                                f"not a {known.response.__name__}")
            return response
        except RpcError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = "cancelled"
            raise
        except Exception:
            code = "internal"
            log.exception("%s/%s: internal error", SERVICE, method)
            raise RpcError("internal", f"{SERVICE}/{method}: internal error (logged)") from None
        finally:
            metrics.in_flight -= 1
            if self.gate is not None:
                self.gate.leave()
            metrics.record(transport, method if known else UNKNOWN_METHOD, code, time.perf_counter() - started,
                           ran=ran[0] if ran else None)

    def _answer(self, method: Method, request: Message, ran: list[float]) -> Awaitable[Message | bytes]:
        sync = self.sync.get(method.name)
        if sync is not None and self.workers is not None:
            return self._in_worker(self.workers, method.name, request, ran)
        if sync is not None:
            def run(reader: Any) -> Message:
                started = time.perf_counter()
                try:
                    return sync(cast(DataPlaneReader, reader), request)
                finally:
                    ran.append(time.perf_counter() - started)
            return self.pool.run(run, bulk=is_bulk(method.name, request))
        handler = self.async_.get(method.name)
        if handler is not None:
            return handler(self.context, request)
        raise RpcError("unimplemented", f"{SERVICE}/{method.name} is not implemented by smalldp")

    @staticmethod
    async def _in_worker(workers: RpcWorkers, name: str, request: Message, ran: list[float]) -> bytes:
        try:
            return await workers.answer(name, request.SerializeToString(), bulk=is_bulk(name, request), ran=ran)
        except WorkerBug as bug:
            log.error("%s/%s: internal error in a worker process\n%s", SERVICE, name, bug)
            raise RpcError("internal", f"{SERVICE}/{name}: internal error (logged)") from None


def is_bulk(method: str, request: Message) -> bool:
    """Whether a call goes to the ReaderPool's bulk thread (BULK_METHODS, or more than
    BULK_ITEMS items in the request's repeated fields)."""
    if method in BULK_METHODS:
        return True
    items = 0
    for field_descriptor, value in request.ListFields():
        if field_descriptor.is_repeated:
            items += len(value)
    return items > BULK_ITEMS


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc has no type stubs
    """Every path answered: bsky.Service's methods dispatched, any other UNIMPLEMENTED."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._by_path = {f"/{SERVICE}/{name}": self._unary(dispatcher, name) for name in METHODS}

    @staticmethod
    def _unary(dispatcher: Dispatcher, name: str) -> grpc.RpcMethodHandler:
        async def answer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await dispatcher.call_bytes(name, decode_proto(raw), "grpc")
            except RpcError as exc:
                await context.abort(GRPC_CODES[exc.code], exc.message)
                raise AssertionError("abort returned") from None
        # No (de)serializers: the handler gets the request's bytes and returns the answer's.
        return grpc.unary_unary_rpc_method_handler(answer)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path = cast(str, handler_call_details.method)
        # a path outside bsky.Service goes to dispatch too: UNIMPLEMENTED naming it, counted
        return self._by_path.get(path) or self._unary(self._dispatcher, path)


class GrpcBindError(OSError):
    """The gRPC server could not listen; ``address`` and the reason are in the message."""


class GrpcServer:
    """grpc.aio serving bsky.Service on ``host:port`` (see the module docstring)."""

    def __init__(self, dispatcher: Dispatcher, host: str, port: int, *,
                 max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.dispatcher = dispatcher
        self.host, self.port = host, port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._max_message_bytes = max_message_bytes
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Bind and serve; returns the port bound (useful with port 0). GrpcBindError if
        the address cannot be bound."""
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0),
                     ("grpc.max_receive_message_length", self._max_message_bytes),
                     ("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers((_Handlers(self.dispatcher),))
        try:
            port = int(server.add_insecure_port(self.address))
        except RuntimeError:
            raise GrpcBindError(f"cannot listen for gRPC on {self.address}: "
                                f"{bind_problem(self.host, self.port)}") from None
        await server.start()
        self._server, self.port = server, port
        metrics = self.dispatcher.metrics
        metrics.listen = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"
        metrics.state = "serving"
        log.info("answering %s over gRPC on %s", SERVICE, metrics.listen)
        return port

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Refuse new calls, give those under way ``grace`` seconds, then cancel them."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
            self.dispatcher.metrics.state = "stopped"


def bind_problem(host: str, port: int) -> str:
    """Why ``host:port`` cannot be bound, found by trying (grpc only says that it failed)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(addr)
            except OSError as exc:
                return exc.strerror or str(exc)
    return "grpc could not bind it (it may have been taken meanwhile)"
