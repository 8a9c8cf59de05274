"""The admin interface of a running `smalldp serve`: a Unix socket, for `smalldp backfill`.

Why a Unix socket: nothing on the network can reach it at all, and the file's mode (0600,
the service's user) is the authentication: only that user and root may connect.  It
lives in the data directory by default (``admin_socket``).  Its small JSON API:

  GET  /backfill          the running (or last) backfill: state, request, figures
  POST /backfill          start one (JSON: names | follows_of | relay, refetch, allow_local);
                          409 while one runs, 400 for a bad request
  POST /backfill/cancel   stop the running one (what it finished stays done)

Server (`AdminServer`, started by service.py) and client (`hand_off`, `admin_status`,
`admin_cancel`, used by cli.py) are both here, so the two sides cannot drift apart.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from smalldp.config import ConfigError
from smalldp.ingest.backfill import BackfillProgress, BackfillSummary
from smalldp.ingest.backfill_run import BackfillRequest
from smalldp.ingest.backfill_service import BackfillBusy, BackfillHandOff

log = logging.getLogger(__name__)
MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path holds 108 with the terminating NUL
MAX_REQUEST_BYTES = 64 << 20  # a --from-file of a few hundred thousand DIDs
POLL_S = 0.5  # how often `smalldp backfill` asks for the figures while it follows a run
HANDOFF: web.AppKey[BackfillHandOff] = web.AppKey("handoff", BackfillHandOff)


class AdminError(RuntimeError):
    """The admin socket cannot be used; the message says why."""


class AdminUnavailable(AdminError):
    """Nothing answers on the admin socket (serve is not running, or has stopped)."""


def check_socket_path(path: Path) -> None:
    """AdminError when ``path`` is too long for a Unix socket."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise AdminError(f"the admin socket path {path} is {size} bytes, longer than the {MAX_SOCKET_PATH} "
                         "a Unix socket allows: set admin_socket to a shorter path (or off)")


def answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at ``path``."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------- the server (in serve)

def _error(status: int, error: str, message: str) -> web.Response:
    return web.json_response({"error": error, "message": message}, status=status)


async def _get_backfill(request: web.Request) -> web.Response:
    return web.json_response(request.app[HANDOFF].status())


async def _post_backfill(request: web.Request) -> web.Response:
    try:
        body = await request.json(loads=json.loads)
        wanted = BackfillRequest.from_dict(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, "InvalidRequest", str(exc))
    try:
        return web.json_response(request.app[HANDOFF].start(wanted), status=202)
    except BackfillBusy as exc:
        return _error(409, "Busy", str(exc))
    except ConfigError as exc:
        return _error(400, "InvalidSetting", str(exc))


async def _cancel_backfill(request: web.Request) -> web.Response:
    cancelled = await request.app[HANDOFF].cancel()
    return web.json_response({"cancelled": cancelled, **request.app[HANDOFF].status()})


class AdminServer:
    """The socket and its application, for one `smalldp serve` run."""

    def __init__(self, path: Path, handoff: BackfillHandOff) -> None:
        self.path = path
        self.handoff = handoff
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind the socket (mode 0600); AdminError when another serve answers on it or the
        path holds something that is not a socket."""
        path = self.path
        check_socket_path(path)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise AdminError(f"{path} exists and is not a socket: set admin_socket to another path")
            if answers(path):
                raise AdminError(f"another smalldp serve answers on {path}: is it running on this data directory?")
            path.unlink()  # left by a serve that was killed
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app[HANDOFF] = self.handoff
        app.router.add_get("/backfill", _get_backfill)
        app.router.add_post("/backfill", _post_backfill)
        app.router.add_post("/backfill/cancel", _cancel_backfill)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        old_umask = os.umask(0o177)  # the socket is created 0600: no moment with a wider mode
        try:
            await web.UnixSite(self._runner, str(path)).start()
        except OSError as exc:
            await self._runner.cleanup()
            raise AdminError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)

    async def close(self) -> None:
        """Stop answering and remove the socket."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        try:
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------- the client (smalldp backfill)

async def _call(path: Path, method: str, route: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)),
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            async with session.request(method, f"http://smalldp{route}", json=body) as response:
                return response.status, dict(await response.json())
    except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
        raise AdminUnavailable(f"smalldp serve does not answer on {path} ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise AdminUnavailable(f"smalldp serve does not answer on {path}") from None
        raise AdminError(f"cannot use {path}: {exc.strerror or exc}") from None


async def admin_status(path: Path) -> dict[str, Any]:
    """The running (or last) backfill of the serve answering on ``path``."""
    return (await _call(path, "GET", "/backfill"))[1]


async def admin_cancel(path: Path) -> dict[str, Any]:
    """Ask the serve on ``path`` to stop its backfill."""
    return (await _call(path, "POST", "/backfill/cancel"))[1]


async def hand_off(path: Path, request: BackfillRequest, progress: BackfillProgress) -> dict[str, Any]:
    """Start ``request`` in the serve answering on ``path`` and follow it to its end,
    showing progress; returns its last status (AdminError when it was refused, with why)."""
    status, started = await _call(path, "POST", "/backfill", request.as_dict())
    if status != 202:
        raise AdminError(str(started.get("message") or started))
    run_id = started["id"]
    current = started
    while current["state"] == "running":
        await asyncio.sleep(POLL_S)
        try:
            current = await admin_status(path)
        except AdminUnavailable:
            raise AdminUnavailable("smalldp serve stopped during the backfill: run the same command again "
                                   "to resume it (done repos are skipped)") from None
        if current["id"] != run_id:
            raise AdminError("the service is running another backfill now; `smalldp backfill --status` shows it")
        progress.update(BackfillSummary.from_dict(current["summary"]), int(current["total"]),
                        bool(current["listing"]), float(current["summary"]["seconds"]),
                        force=current["state"] != "running")
    progress.done()
    return current


def describe_running(status: dict[str, Any]) -> str:
    """One line for `smalldp backfill --status` about the serve's backfill."""
    summary = status["summary"]
    finished = summary["done"] + summary["failed"] + summary["skipped"]
    line = (f"smalldp serve: backfill {status['state']}: {finished:,}/{status['total']:,}"
            f"{'+' if status['listing'] else ''} repos ({summary['failed']:,} failed), "
            f"{summary['records']:,} records in {summary['seconds']:,.1f} s")
    if status.get("error"):
        line += f" ({status['error']})"
    return line


def print_error(message: str) -> None:
    print(f"smalldp backfill: {message}", file=sys.stderr)
