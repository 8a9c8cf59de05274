"""`smalldp serve`: the HTTP API and live ingest in one asyncio process, under systemd.

This is the composition root: the only module that knows both the ingest side and the
HTTP side. Lifecycle (aiosmtpd-style, kept apart from protocol and policy):

  open the store (ingest thread) -> bind HTTP (Connect included) -> bind gRPC
  (grpc_listen, unless off) -> READY=1 -> follow Jetstream (or, with the `firehose`
  setting, relays)
  SIGHUP: re-read the config, send the new filters
  SIGTERM/SIGINT: STOPPING=1 -> stop reading -> commit the batch -> close the
  store -> stop gRPC (calls under way get a grace period) -> close HTTP
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web

from smalldp.admin import AdminError, AdminServer, check_socket_path
from smalldp.api.server import make_app
from smalldp.appview import connect
from smalldp.appview.grpc_server import GrpcBindError, GrpcServer
from smalldp.appview.identity import IdentityCache
from smalldp.appview.rpcs.identity import SERVICE as IDENTITY_SERVICE
from smalldp.config import ConfigError, Settings
from smalldp.ingest import zdict
from smalldp.ingest.backfill_service import BackfillHandOff
from smalldp.ingest.diskguard import DiskGuard
from smalldp.ingest.jetstream import ClientOptions, Filters
from smalldp.ingest.live import LiveIngest
from smalldp.ingest.metrics import IngestMetrics
from smalldp.priority import QueryGate
from smalldp.store.schema import db_path, upgrade_in_place
from smalldp.store.writer import Writer
from smalldp.systemd import Notifier

log = logging.getLogger(__name__)
STATUS_EVERY_S = 5.0
HTTP_SHUTDOWN_S = 2.0
STOP_WAIT_S = 30.0  # the ingest thread commits its batch and closes the store within this
SWITCH_INTERVAL_S = 0.0002


class ServiceError(RuntimeError):
    """The service cannot start; the message says why (printed, exit status 2)."""


def open_writer(settings: Settings) -> Writer:
    """The store's writer with the settings' tuning, for live ingest: it runs merge slices
    itself, between batches (LiveIngest's merge_ms)."""
    return Writer(db_path(settings.data_dir), cache_mb=settings.cache_mb, mmap_mb=settings.mmap_mb,
                  actor_cache=settings.actor_cache, fanout=settings.compaction_fanout,
                  body_collections=settings.body_collections, merge_slices=0)


def client_options(settings: Settings) -> ClientOptions:
    """What the ingest client needs from the settings: relays when `firehose` is set (it
    wins over `jetstream`; relays send uncompressed DAG-CBOR), else Jetstream."""
    if settings.firehose:
        return ClientOptions(
            endpoints=settings.firehose, wire="firehose",
            filters=Filters(settings.wanted_collections, settings.wanted_dids),
            compress=False, liveness_s=settings.liveness_s, backoff_max_s=settings.backoff_max_s,
            max_message_bytes=settings.max_message_bytes, verify_commits=settings.verify_commits,
            plc_url=settings.plc_url)
    return ClientOptions(
        endpoints=settings.jetstream, wire=settings.jetstream_wire,
        filters=Filters(settings.wanted_collections, settings.wanted_dids),
        compress=settings.compress, rewind_s=settings.rewind_s, liveness_s=settings.liveness_s,
        backoff_max_s=settings.backoff_max_s, max_message_bytes=settings.max_message_bytes)


def load_v1_dictionary(settings: Settings) -> bytes | None:
    """The v1 dictionary, or None (with the reason logged) to run uncompressed."""
    if not settings.compress or settings.jetstream_wire != "v1" or settings.firehose:
        return None
    try:
        return zdict.legacy_dictionary(Path(settings.data_dir), settings.zstd_dictionary,
                                       settings.zstd_dictionary_url)
    except zdict.DictionaryError as exc:
        log.warning("no zstd dictionary (%s): running uncompressed, trying again in 10 minutes", exc)
        return None


class Service:
    """One `smalldp serve` run."""

    def __init__(self, settings: Settings, *, ingest: bool,
                 reload_settings: Callable[[], Settings] | None = None,
                 notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.ingest = ingest
        self.reload_settings = reload_settings
        self.notifier = notifier or Notifier()
        self.metrics = IngestMetrics(state="starting" if ingest else "disabled")
        self.stop = asyncio.Event()
        self.port: int | None = None  # the bound port (useful with port 0)
        self.grpc_port: int | None = None  # the gRPC server's bound port (None: grpc_listen off)
        self._grpc: GrpcServer | None = None
        self.ready = asyncio.Event()
        self._live: LiveIngest | None = None
        self.gate = QueryGate()
        self.backfill: BackfillHandOff | None = None  # backfills handed over by `smalldp backfill`
        self._admin: AdminServer | None = None

    def pending_events(self) -> int:
        """Events received and not yet committed."""
        return self._live.pending() if self._live is not None else 0

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``stop``); returns the exit status."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        # The ingest thread runs Python flat out while catching up; a query needs the GIL
        # several times (loop, reader thread, loop), and at the default 5 ms switch
        # interval each hand-over can wait that long (measured during catch-up at 100
        # queries/s: p50 18 ms at 5 ms, 9 ms at 1 ms, 4-5 ms at 0.2 ms; ingest unchanged).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        path = db_path(settings.data_dir)
        admin_path = settings.admin_socket_path()
        if self.ingest and admin_path is not None:
            try:
                check_socket_path(admin_path)  # before anything is opened
            except AdminError as exc:
                raise ServiceError(str(exc)) from None
        if self.ingest:
            live = self._live = LiveIngest(
                lambda: open_writer(settings), client_options(settings), self.metrics,
                batch_events=settings.batch_events, batch_ms=settings.batch_ms, merge_ms=settings.merge_ms,
                v1_dictionary=lambda: load_v1_dictionary(settings), data_dir=Path(settings.data_dir),
                query_gate=self.gate,
                disk_guard=DiskGuard(Path(settings.data_dir), min_free_mb=settings.min_free_mb,
                                     min_free_percent=settings.min_free_percent))
            live.start()
            await loop.run_in_executor(None, live.wait_open)
            if live.error is not None:
                raise ServiceError(f"cannot open the store in {settings.data_dir}: {live.error}")
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        elif not path.exists():
            raise ServiceError(f"no database in {settings.data_dir}: run `smalldp import` first, "
                               "or serve without --no-ingest")
        else:
            upgrade_in_place(path)  # a store from an earlier release: the queries need its new columns
        # bsky.Service's GetIdentityByDid/-Handle: DID documents from plc_url (or did:web),
        # cached; the session is closed when the service ends.
        session = aiohttp.ClientSession()
        rpc_services = {IDENTITY_SERVICE: IdentityCache(session, plc_url=settings.plc_url)}
        if self._live is not None:
            self.backfill = BackfillHandOff(settings, self._live)
            app = make_app(path, read_threads=settings.read_threads, cache_mb=settings.cache_mb,
                           mmap_mb=settings.mmap_mb, rpc_processes=settings.rpc_processes,
                           ingest_status=self.metrics.health, sample_sources=[self.metrics.samples],
                           query_gate=self.gate, backfill_status=self.backfill.health, rpc_services=rpc_services)
        else:
            app = make_app(path, read_threads=settings.read_threads, cache_mb=settings.cache_mb,
                           mmap_mb=settings.mmap_mb, rpc_processes=settings.rpc_processes,
                           rpc_services=rpc_services)
        app.on_cleanup.append(lambda _: session.close())
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=HTTP_SHUTDOWN_S)
        await runner.setup()
        host, port = settings.listen_host_port()

        async def give_up(message: str) -> ServiceError:
            """Undo what started (gRPC, HTTP, ingest) and say why the service cannot run."""
            if self._grpc is not None:
                await self._grpc.stop(0)
            await runner.cleanup()
            if self._live is not None:
                self._live.stop()
                await loop.run_in_executor(None, self._live.wait_done, STOP_WAIT_S)
            return ServiceError(message)

        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as exc:
            raise await give_up(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from None
        grpc_address = settings.grpc_host_port()
        if grpc_address is not None:
            self._grpc = GrpcServer(app[connect.DISPATCHER], *grpc_address)
            try:
                self.grpc_port = await self._grpc.start()
            except GrpcBindError as exc:
                self._grpc = None
                raise await give_up(f"{exc} (grpc_listen; off disables it)") from None
        if self.backfill is not None and admin_path is not None:
            self._admin = AdminServer(admin_path, self.backfill)
            try:
                await self._admin.start()
            except AdminError as exc:
                raise await give_up(str(exc)) from None
        self.port = runner.addresses[0][1] if runner.addresses else port
        following = "relays " + ", ".join(settings.firehose) if settings.firehose else "Jetstream"
        log.info("serving on http://%s:%d, gRPC %s (%s)", host, self.port,
                 app[connect.DISPATCHER].metrics.listen, f"following {following}" if self.ingest else "no ingest")
        self.notifier.ready(self.metrics.status_line() if self.ingest else "serving, no ingest")
        self.ready.set()
        try:
            return await self._until_stopped()
        finally:
            self.notifier.stopping()
            if self._grpc is not None:  # before HTTP: its cleanup closes the reader pool
                await self._grpc.stop()
            await runner.cleanup()
            self.notifier.close()
            log.info("stopped")

    async def _until_stopped(self) -> int:
        heartbeat = asyncio.create_task(self._heartbeat())
        live = self._live
        if live is None:
            await self.stop.wait()
            heartbeat.cancel()
            return 0
        loop = asyncio.get_running_loop()
        waiters: list[asyncio.Future[Any]] = [loop.run_in_executor(None, live.wait_done),
                                              asyncio.create_task(self.stop.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        # Shutdown: end a backfill (its done repos stay done), stop reading, commit the
        # batch, close the store.
        self.metrics.state = "stopping"
        self.notifier.stopping()
        await self._stop_backfill()
        log.info("stopping: committing %d received events", live.pending())
        live.stop()
        finished = await loop.run_in_executor(None, live.wait_done, STOP_WAIT_S)
        waiters[1].cancel()
        heartbeat.cancel()
        if not finished:
            log.error("the ingest thread did not finish within %.0f s", STOP_WAIT_S)
            return 1
        return 1 if live.error is not None else 0

    async def _stop_backfill(self) -> None:
        if self._admin is not None:
            await self._admin.close()
        if self.backfill is not None and await self.backfill.cancel():
            log.info("the backfill was stopped; `smalldp backfill` run again resumes it")

    async def _heartbeat(self) -> None:
        """STATUS= every few seconds; WATCHDOG=1 only while ingest is healthy."""
        notifier, metrics = self.notifier, self.metrics
        window = notifier.watchdog_s or 60.0
        every = min(STATUS_EVERY_S, window / 3)
        while True:
            live = self._live
            writer = live.writer if live is not None else None
            merging = writer.merging_since if writer is not None else None
            if not self.ingest:
                notifier.watchdog()
            else:
                notifier.status(metrics.status_line())
                if metrics.progressing(window, merging):
                    notifier.watchdog()
            await asyncio.sleep(every)

    async def _reload(self) -> None:
        """SIGHUP: re-read the configuration and follow its filters."""
        if self.reload_settings is None or self._live is None:
            return
        try:
            new = self.reload_settings()
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded: %s", exc)
            return
        filters = Filters(new.wanted_collections, new.wanted_dids)
        log.info("SIGHUP: %d collections, %d DIDs wanted (other settings apply at restart)",
                 len(filters.collections), len(filters.dids))
        self._live.update_filters(filters)
