"""The status page at `/`, loaded in headless Chromium from a real `smalldp serve`.

`smalldp replay` serves a generated capture as a Jetstream on 127.0.0.1, `smalldp serve`
follows it; once everything is committed and ingest is idle (so the figures stand
still), Chromium (Debian's package, driven over the DevTools protocol with aiohttp)
loads the page, and every figure it shows must match /xrpc/_health fetched at the same
moment, within tolerances for the figures that move on their own (lag, disk). The
figures themselves are checked against the SQLite file: links, records, accounts, and
the top targets of the last hour against a full scan of the forward index. The page
must make no request off its origin, throw nothing, and its screenshot must be a real
PNG with something drawn in it (set SMALLDP_STATUS_SCREENSHOT=PATH to keep a copy).

A second test serves a store with a paused ingest (what the disk guard reports) and
checks the page says "paused: <reason>", the reason shown as text, never as markup.

Chromium comes from scripts/_system_deps.sh; without it the tests skip with a warning.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import warnings
import zlib
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from smalldp.api import status
from smalldp.api.server import make_app
from smalldp.derived import is_derived
from smalldp.events import MalformedEvent, decode_event
from smalldp.store.encoding import decode_links, decode_target
from smalldp.tid import tid_from_time

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "scripts" / "gen_events.py"
LEXICON_FILES = sorted((ROOT / "lexicons").rglob("*.json"))
EVENTS = 20_000
# 5 events/s of capture time: 20,000 events span 67 minutes, more than the one-hour
# window of the top targets, and no 5-second slot holds 50 records, so that list is
# exact (not a sample) and can be compared with a full scan.
RATE = 5.0
WIDTH, HEIGHT = 1280, 1000


# ---------------------------------------------------------------- Chromium over DevTools


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "chromium is not installed (scripts/_system_deps.sh installs it with apt-get)"
        warnings.warn(f"STATUS PAGE TEST SKIPPED: {reason}", stacklevel=2)
        pytest.skip(reason)
    return path


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._id = 0
        self.events: list[dict[str, Any]] = []  # protocol events seen (console, exceptions, requests)

    async def start(self) -> None:
        self.profile.mkdir(parents=True, exist_ok=True)
        args = [
            _chromium(), "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
            "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}", f"--user-data-dir={self.profile}",
            # Nothing but loopback resolves: the test cannot reach the internet, whatever
            # Chromium would like to fetch on its own.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        log = open(self.profile / "chromium.log", "wb")
        self.proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=log)
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.proc.returncode is None, (self.profile / "chromium.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            pages = [t for t in await reply.json() if t["type"] == "page"]
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT,
                        deviceScaleFactor=1, mobile=False)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command; events arriving meanwhile are kept in ``events``."""
        assert self.ws is not None
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 30)
            if message.get("id") == self._id:
                assert "error" not in message, (method, message["error"])
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                                 awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            # While a navigation is under way the document may be missing: not ready yet.
            result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
            value = None if "exceptionDetails" in result else result["result"].get("value")
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> bytes:
        """The whole page as PNG, saved to ``path``."""
        size = (await self.send("Page.getLayoutMetrics"))["cssContentSize"]
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                               clip={"x": 0, "y": 0, "width": WIDTH, "height": max(HEIGHT, size["height"]),
                                     "scale": 1})
        import base64
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        return data


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Chromium]:
    browser = Chromium(profile)
    try:
        await browser.start()
        yield browser
    finally:
        await browser.close()


# What the page shows, read from the DOM after its script ran: every [data-field] (text
# and raw value), the chart's bars, the top-targets rows, the lexicon links, the banners.
READ_PAGE = """(() => {
  const fields = {};
  for (const el of document.querySelectorAll('[data-field]'))
    fields[el.dataset.field] = {text: el.textContent, value: el.dataset.value ?? null};
  return {
    refreshes: Number(document.documentElement.dataset.refreshes || 0),
    fields,
    badge: document.getElementById('state').className,
    paused: !document.getElementById('paused').hidden,
    pausedText: document.getElementById('paused').textContent,
    pausedHtml: document.getElementById('paused').innerHTML,
    offline: !document.getElementById('offline').hidden,
    backfill: !document.getElementById('backfill').hidden,
    bars: [...document.querySelectorAll('#chart rect')].map(r => ({
      t: Number(r.dataset.t), value: Number(r.dataset.value), height: Number(r.getAttribute('height')),
      partial: r.classList.contains('partial')})),
    top: [...document.querySelectorAll('#top tbody tr[data-target]')].map(tr => ({
      target: tr.dataset.target, links: Number(tr.dataset.links), text: tr.innerText,
      href: tr.querySelector('a') && tr.querySelector('a').getAttribute('href')})),
    lexicons: [...document.querySelectorAll('#lexicons a')].map(a => ({id: a.textContent, href: a.getAttribute('href')})),
  };
})()"""


# ---------------------------------------------------------------- reading the page's text


def parse_int(text: str) -> int:
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", text), text
    return int(text.replace(",", ""))


UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50}


def parse_bytes(text: str) -> float:
    number, unit = text.split(" ")
    return float(number) * UNITS[unit]


def parse_duration(text: str) -> float:
    """"3.4 s", "12 s", "29 min 3 s", "1 h 2 min", "2 d 3 h" -> seconds."""
    assert re.fullmatch(r"[\d.]+ (d|h|min|s)( [\d.]+ (d|h|min|s))?", text), text
    return sum(float(n) * {"d": 86400, "h": 3600, "min": 60, "s": 1}[unit]
               for n, unit in re.findall(r"([\d.]+) (d|h|min|s)\b", text))


def assert_bytes_text(field: dict[str, str], expected: int, tolerance: float) -> None:
    """The raw value is near ``expected``, and the text is that value to three digits."""
    value = int(field["value"])
    assert abs(value - expected) <= tolerance, (field, expected)
    shown = parse_bytes(field["text"])
    assert abs(shown - value) <= max(0.006 * value, 1), field


# ---------------------------------------------------------------- the PNG


def check_png(data: bytes) -> tuple[int, int, int]:
    """Validate a PNG (signature, chunk CRCs, IHDR, the image data's exact size and
    filters) and return (width, height, distinct colours in its first 400 rows)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0]
        assert zlib.crc32(kind + body) == crc, kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    assert ihdr is not None and pos == len(data)
    width, height, depth, colour, _, _, interlace = ihdr
    assert depth == 8 and colour in (2, 6) and interlace == 0, ihdr
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    assert len(raw) == height * (stride + 1)
    # Undo the scanline filters of the top rows (header, cards, the chart's top) and count colours.
    colours: set[bytes] = set()
    prev = bytearray(stride)
    for y in range(min(height, 400)):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        assert kind <= 4, kind
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, bpp * 4))
        prev = line
    return width, height, len(colours)


# ---------------------------------------------------------------- the servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SMALLDP_") and k not in ("STATE_DIRECTORY", "NOTIFY_SOCKET")}
    env["SMALLDP_LOG_LEVEL"] = "warning"
    return env


def last_op_time(lines: list[bytes]) -> int:
    """time_us of the last event smalldp applies: where the cursor ends."""
    for line in reversed(lines):
        try:
            if decode_event(line.decode()) is not None:
                return int(json.loads(line)["time_us"])
        except MalformedEvent:
            continue
    raise AssertionError("no event")


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as reply:
        assert reply.status == 200, (url, reply.status)
        return await reply.json()


def store_truth(db: Path) -> dict[str, Any]:
    """Links, records, accounts and the last hour's target counts, read straight from
    the file (a full scan of the forward index, no sampling)."""
    from pyroaring import BitMap

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        meta = dict(conn.execute("SELECT k, v FROM meta"))
        hidden = BitMap.deserialize(meta["hidden"]) if meta.get("hidden") else BitMap()
        dids = dict(conn.execute("SELECT aid, did FROM actor"))
        colls = dict(conn.execute("SELECT cid, nsid FROM coll"))
        derived = {sid for sid, path in conn.execute("SELECT sid, path FROM source") if is_derived(path)}
        cursor = int(meta["cursor"])
        last_minute = cursor // 60_000_000
        lo = tid_from_time((last_minute - 59) * 60_000_000)
        hi = tid_from_time((last_minute + 1) * 60_000_000)
        counts: Counter[str] = Counter()
        window_records = 0
        for aid, links in conn.execute("SELECT aid, links FROM fwd WHERE sk >= ? AND sk < ? AND links IS NOT NULL",
                                       (lo, hi)):
            if aid in hidden:
                continue
            window_records += 1
            for sid, tkey in decode_links(links):
                if sid not in derived:
                    counts[decode_target(tkey, dids.__getitem__, colls.__getitem__)] += 1
        return {
            "links": meta["links"], "cursor": cursor,
            "records": conn.execute("SELECT count(*) FROM fwd WHERE links IS NOT NULL").fetchone()[0],
            "accounts": conn.execute("SELECT max(aid) FROM actor").fetchone()[0],
            "window_records": window_records, "target_counts": counts,
            "before_window": conn.execute("SELECT count(*) FROM fwd WHERE sk > 0 AND sk < ?", (lo,)).fetchone()[0],
        }
    finally:
        conn.close()


# ---------------------------------------------------------------- the tests


def test_status_page_in_chromium_matches_health(tmp_path: Path) -> None:
    _chromium()
    capture = tmp_path / "capture.jsonl"
    # The capture ends about 40 minutes ago: a real lag to show, and its last hour is
    # the top-targets window.
    start_us = int((time.time() - 40 * 60 - EVENTS / RATE) * 1e6)
    subprocess.run([sys.executable, str(GEN), "--events", str(EVENTS), "--seed", "9", "--rate", str(RATE),
                    "--start-time-us", str(start_us), "--out", str(capture)], check=True, env=_env(), timeout=120)
    last = last_op_time(capture.read_bytes().splitlines())
    data = tmp_path / "data"
    db = data / "smalldp.sqlite"
    env = _env()

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], bytes, list[dict[str, Any]]]:
        rport, port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        replay = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smalldp.cli", "replay", str(capture), "--listen", f"127.0.0.1:{rport}",
            env=env, stdout=asyncio.subprocess.DEVNULL)
        serve = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smalldp.cli", "serve", "--grpc-listen", "off", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
            "--jetstream", f"ws://127.0.0.1:{rport}/subscribe", "--no-compress", "--rewind-s", "0",
            "--batch-events", "2000", "--backoff-max-s", "1", env=env)
        try:
            async with aiohttp.ClientSession() as http:
                # Caught up and idle: every event committed, the 10 s rate window empty,
                # and the records count (refreshed every RECORDS_MIN_S) taken after the end.
                deadline = time.monotonic() + 120
                while True:
                    assert serve.returncode is None, "serve exited"
                    assert time.monotonic() < deadline, "not caught up and idle in time"
                    try:
                        health = await get_json(http, f"{base}/xrpc/_health")
                    except aiohttp.ClientError:
                        health = None
                    if (health and health["cursor"] == last and health["jetstream"]["queue_depth"] == 0
                            and health["jetstream"]["events_per_s"] == 0
                            and health["records"] == store_truth(db)["records"]):
                        break
                    await asyncio.sleep(0.25)
                async with chromium(tmp_path / "chromium") as browser:
                    await browser.send("Page.navigate", url=f"{base}/")
                    await browser.wait_for("Number(document.documentElement.dataset.refreshes || 0) >= 1")
                    await browser.wait_for("document.querySelectorAll('#lexicons a').length > 0")
                    page = await browser.evaluate(READ_PAGE)
                    health = await get_json(http, f"{base}/xrpc/_health")
                    # The file as it is now (closing it purges deleted accounts, changing counts).
                    truth = store_truth(db)
                    truth["file_bytes"] = db.stat().st_size
                    shot = await browser.screenshot(tmp_path / "status.png")
                    # Every lexicon link works and serves the lexicon it names.
                    for lexicon in page["lexicons"]:
                        doc = await get_json(http, base + lexicon["href"])
                        assert doc["id"] == lexicon["id"]
                    events = list(browser.events)
        finally:
            for proc in (serve, replay):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(proc.wait(), 30)
        assert serve.returncode == 0
        return page, health, truth, shot, events

    page, health, truth, shot, events = asyncio.run(main())
    fields = page["fields"]

    # The page drew a refresh, is not showing an error, and made no request off its origin.
    assert page["refreshes"] >= 1 and not page["offline"] and not page["paused"]
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    assert requests and all(re.match(r"http://127\.0\.0\.1:\d+/", url) or url.startswith("data:")
                            for url in requests), requests
    assert not [e for e in events if e["method"] == "Runtime.exceptionThrown"]
    errors = [e["params"]["entry"] for e in events
              if e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error"]
    assert not errors, errors

    # Ingest state, cursor, version.
    assert fields["ingest"]["value"] == health["ingest"] == "streaming" and "ok" in page["badge"]
    assert fields["version"]["value"] == health["version"]
    assert int(fields["cursor"]["value"]) == health["cursor"] == truth["cursor"] == last
    # Lag: moves by itself, so within the refresh period plus slack; the text says the value.
    assert abs(float(fields["lag_s"]["value"]) - health["lag_s"]) <= status.REFRESH_S + 5
    assert abs(parse_duration(fields["lag_s"]["text"]) - float(fields["lag_s"]["value"])) <= 60
    assert 40 * 60 - 120 < health["lag_s"] < 40 * 60 + 600

    # Counts stand still once ingest is idle: exactly equal, and equal to the file's own.
    for name, expected in (("links", truth["links"]), ("records", truth["records"]),
                           ("accounts", truth["accounts"]), ("inactive_accounts", health["inactive_accounts"]),
                           ("runs", health["runs"])):
        assert int(fields[name]["value"]) == health[name] == expected, name
        assert parse_int(fields[name]["text"]) == expected, name
    assert truth["links"] > 10_000 and truth["records"] > 10_000
    js = health["jetstream"]
    for name in ("events", "reconnects"):
        assert int(fields[name]["value"]) == js[name] and parse_int(fields[name]["text"]) == js[name], name
    assert js["events"] > 0
    assert float(fields["events_per_s"]["value"]) == js["events_per_s"] == 0

    # Sizes: the file is idle (tolerance for a checkpoint); the disk is shared with the machine.
    assert_bytes_text(fields["file_bytes"], health["file_bytes"], 0.01 * health["file_bytes"])
    assert int(fields["file_total"]["value"]) == int(fields["file_bytes"]["value"]) + int(fields["wal_bytes"]["value"])
    assert_bytes_text(fields["file_total"], health["file_bytes"] + health["wal_bytes"], 1 << 20)
    assert health["file_bytes"] == truth["file_bytes"]
    assert_bytes_text(fields["wal_bytes"], health["wal_bytes"], 1 << 20)
    disk = health["disk"]
    slack = max(0.02 * disk["total_bytes"], 256 << 20)
    assert_bytes_text(fields["disk_free"], disk["free_bytes"], slack)
    assert_bytes_text(fields["disk_used"], disk["used_bytes"], slack)
    assert_bytes_text(fields["disk_total"], disk["total_bytes"], 0)
    assert fields["disk_path"]["text"] == str(data)
    usage = shutil.disk_usage(data)
    assert abs(disk["free_bytes"] - usage.free) <= slack and disk["total_bytes"] == usage.total

    # The chart: one bar per minute of the history, at its height.
    history = health["events_per_s_history"]
    assert history and history[-1]["t"] >= time.time() // 60 * 60 - 120
    assert sum(p["events_per_s"] * 60 for p in history) > 0
    bars = {b["t"]: b for b in page["bars"]}
    assert len(bars) == len(page["bars"]) >= 1
    for point in history:
        bar = bars.get(point["t"])
        if bar is None:  # a minute that began between the page's refresh and this fetch
            assert point is history[-1], (point, page["bars"])
            continue
        if not (bar["partial"] or point.get("partial")):
            assert bar["value"] == point["events_per_s"], (bar, point)
    top_bar = max(page["bars"], key=lambda b: b["value"])
    assert top_bar["value"] > 0 and top_bar["height"] > 20

    # The most-linked targets of the last hour: the page's rows are health's, and health's
    # are the full scan's (5 events/s never fills a slot, so nothing was sampled away).
    top = health["top_targets_last_hour"]
    assert not top["sampled"] and top["records_read"] == truth["window_records"] > 1000
    assert truth["before_window"] > 1000  # the capture is longer than the window: the edge matters
    assert [(r["target"], r["links"]) for r in page["top"]] == [(t["target"], t["links"]) for t in top["targets"]]
    counts = truth["target_counts"]
    assert len(top["targets"]) == status.TOP_TARGETS
    shown = [t["target"] for t in top["targets"]]
    for entry in top["targets"]:
        assert entry["links"] == counts[entry["target"]] == sum(s["links"] for s in entry["sources"])
    assert [t["links"] for t in top["targets"]] == sorted((t["links"] for t in top["targets"]), reverse=True)
    assert max((n for target, n in counts.items() if target not in shown), default=0) <= top["targets"][-1]["links"]
    for row in page["top"]:
        assert row["href"].startswith("/xrpc/blue.microcosm.links.getBacklinks?subject=")
        assert str(row["links"]) in row["text"]

    # Lexicons: every file of lexicons/, linked by its id.
    ids = sorted(json.loads(p.read_text())["id"] for p in LEXICON_FILES)
    assert sorted(lex["id"] for lex in page["lexicons"]) == ids and len(ids) >= 20

    # The screenshot: a valid PNG of the whole page, with something drawn in it.
    width, height, colours = check_png(shot)
    assert width == WIDTH and height >= HEIGHT and len(shot) > 30_000 and colours >= 30, (width, height, colours)
    keep = os.environ.get("SMALLDP_STATUS_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot)


def test_paused_ingest_shows_its_reason(tmp_path: Path) -> None:
    """What the disk guard reports (state "paused", a reason) is on the page, as text."""
    _chromium()
    from smalldp.store.writer import Writer

    db = tmp_path / "smalldp.sqlite"
    writer = Writer(db)
    writer.close()
    reason = "disk: 812 MiB free < 1 GiB floor <b>bold?</b>"
    ingest = {"state": "paused", "paused_reason": reason, "events": 12, "events_per_s": 0.0,
              "reconnects": 0, "last_error": "", "queue_depth": 0,
              "disk": {"free_bytes": 812 << 20, "total_bytes": 8 << 30, "floor_bytes": 1 << 30}}

    # and a backfill handed to the serve, shown while it runs (its figures, its error as text)
    backfill: dict[str, Any] | None = {
        "id": 1, "state": "running", "error": "<i>x</i>", "total": 40, "listing": False,
        "summary": {"done": 3, "failed": 1, "skipped": 2, "records": 12345, "bytes": 5 << 20,
                    "records_per_s": 2469.0, "seconds": 5.0}}

    async def main() -> dict[str, Any]:
        app = make_app(db, ingest_status=lambda: dict(ingest), backfill_status=lambda: backfill)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with chromium(tmp_path / "chromium") as browser:
                await browser.send("Page.navigate", url=f"http://127.0.0.1:{port}/")
                # The record count may come a refresh after the other figures: a store that
                # keeps no counter (nothing written yet) is counted after they are published.
                await browser.wait_for("Number(document.documentElement.dataset.refreshes || 0) >= 1 && "
                                       "!!document.querySelector('[data-field=records]').dataset.value")
                first = await browser.evaluate(READ_PAGE)
                # Ingest resumes: the page follows on its next refresh.
                nonlocal backfill
                ingest.update(state="streaming", paused_reason="")
                backfill = None
                await browser.wait_for("document.getElementById('paused').hidden", timeout=status.REFRESH_S * 3)
                second = await browser.evaluate(READ_PAGE)
                return {"first": first, "second": second}
        finally:
            await runner.cleanup()

    pages = asyncio.run(main())
    first = pages["first"]
    assert first["paused"] and first["pausedText"].strip() == f"paused: {reason}"
    assert "<b>" not in first["pausedHtml"] and "&lt;b&gt;" in first["pausedHtml"]
    assert first["fields"]["ingest"]["text"] == "paused" and "warn" in first["badge"]
    assert first["fields"]["disk_floor"] == {"text": "1.00 GiB", "value": str(1 << 30)}
    assert first["fields"]["records"]["value"] == "0" and first["fields"]["links"]["text"] == "0"
    assert not pages["second"]["paused"] and pages["second"]["fields"]["ingest"]["text"] == "streaming"
    assert first["backfill"] and not pages["second"]["backfill"]
    assert first["fields"]["backfill"] == {
        "text": "running: 6/40 repos (1 failed), 12,345 records, 2,469 records/s, 5.00 MiB, 5.0 s — <i>x</i>",
        "value": "running"}


def test_lexicons_are_package_data() -> None:
    """The lexicons the page links to come from the package (what a wheel installs)."""
    loaded = status.load_lexicons()
    assert sorted(loaded) == sorted(json.loads(p.read_text())["id"] for p in LEXICON_FILES)
    for path in LEXICON_FILES:
        assert json.loads(loaded[json.loads(path.read_text())["id"]]) == json.loads(path.read_text())


def test_rate_history_is_per_minute_and_bounded() -> None:
    history = status.RateHistory()
    t0 = 1_800_000_000.0  # a minute boundary
    events = 0
    for second in range(3 * 3600):  # three hours at 10 events/s, then 20 in the last minutes
        events += 10 if second < 3 * 3600 - 300 else 20
        history.sample(t0 + second + 0.5, events)
    points = history.history()
    assert len(points) == status.HISTORY_MINUTES
    assert points[-1].get("partial") and not any(p.get("partial") for p in points[:-1])
    assert [p["t"] for p in points] == [t0 + 60 * m for m in range(180 - 60, 180)]
    assert all(p["events_per_s"] == 10 for p in points[:-6]) and all(p["events_per_s"] == 20 for p in points[-4:])
    # A restarted counter starts again instead of showing a negative rate.
    history.sample(t0 + 3 * 3600 + 1, 5)
    assert all(p["events_per_s"] >= 0 for p in history.history())


def test_top_targets_sample_each_slot_and_skip_what_is_gone(tmp_path: Path) -> None:
    """The documented meaning of the top targets, on a real store over HTTP: records by
    TID time in the cursor's hour, at most ROWS_PER_SLOT per 5-second slot (then
    "sampled"), deleted records, inactive accounts and older records left out."""
    from helpers_server import BASE_US, HEALTH, POST, Events, apply, at_uri, did, running, tid
    from smalldp.store.writer import Writer

    db = tmp_path / "smalldp.sqlite"
    writer = Writer(db)
    ev = Events()
    # Record TIDs a little before the events' own time_us (the cursor), like a live stream.
    near = ev.now - BASE_US - 40_000_000
    hot, warm, old, hidden_post = (at_uri(did("author"), POST, tid(n)) for n in (1, 2, 3, 4))
    follow_target = did("star")
    events = []
    # 120 likes of `hot` within 1.2 s: one slot, read only up to ROWS_PER_SLOT.
    slot_start = near - near % 5_000_000
    events += [ev.like(did(f"fan{i}"), tid(slot_start + 10_000 * i), hot) for i in range(120)]
    # 30 likes of `warm`, one per second in the next slots: all read.
    events += [ev.like(did(f"warm{i}"), tid(slot_start - 40_000_000 + 1_000_000 * i), warm) for i in range(30)]
    events += [ev.follow(did(f"flw{i}"), tid(slot_start - 45_000_000 + 10_000 * i), follow_target) for i in range(7)]
    # Outside the window: created two hours earlier.
    events += [ev.like(did(f"late{i}"), tid(slot_start - 7_200_000_000 + i), old) for i in range(40)]
    # Gone: a deleted like, and an account deactivated after liking.
    events += [ev.like(did("undo"), tid(slot_start - 30_000_000), warm),
               ev.delete(did("undo"), "app.bsky.feed.like", tid(slot_start - 30_000_000))]
    # (In a slot of their own: hidden records still take their place in a slot's sample.)
    events += [ev.like(did(f"gone{i}"), tid(slot_start - 60_000_000 + i), hidden_post) for i in range(60)]
    events += [ev.account(did(f"gone{i}"), False, 5, "deactivated") for i in range(60)]
    apply(writer, events)

    async def main() -> dict[str, Any]:
        async with running(db) as client:
            return dict(await client.ok(HEALTH))

    health = asyncio.run(main())
    writer.close()
    top = health["top_targets_last_hour"]
    assert top["sampled"]
    assert top["records_read"] == status.ROWS_PER_SLOT + 30 + 7
    assert [(t["target"], t["links"]) for t in top["targets"]] == [
        (hot, status.ROWS_PER_SLOT), (warm, 30), (follow_target, 7)]
    assert top["targets"][0]["sources"] == [{"collection": "app.bsky.feed.like", "path": ".subject.uri",
                                             "links": status.ROWS_PER_SLOT}]
    assert top["to_us"] == health["cursor"] and top["from_us"] == (health["cursor"] // 60_000_000 - 59) * 60_000_000
    assert health["accounts"] >= 120 + 30 + 7 + 40 + 60 and health["inactive_accounts"] == 60
