"""`smalldp replay --wire firehose`: captures served as a relay's `com.atproto.sync.subscribeRepos`.

A stand-in for a relay in tests and benchmarks, next to replay.py's Jetstream. It serves
``GET /xrpc/com.atproto.sync.subscribeRepos`` with the relay's ``cursor`` (a seq: the
frames after it are sent), one binary websocket message per frame, then stays open and
idle as a live tail. A cursor past the last frame gets the relay's ``FutureCursor`` error
frame and a close; one from before the first frame gets ``#info OutdatedCursor`` first.

Two kinds of input file, told apart by their first bytes:

* **frame files**: repeated ``[u32 little-endian length][frame bytes]``, plain or zstd
  (``.zst``), like the fixtures' corpus_frames.bin.zst: real frames, sent unchanged.
* **Jetstream v1 JSONL captures** (plain or ``.zst``): each event becomes the frame a relay
  would send for it (``event_frame``): a ``#commit`` whose ``blocks`` CAR slice holds a
  commit block, an MST node and the record encoded as DAG-CBOR, and whose op names the
  record by its own CID (not the capture's: generated captures carry made-up CIDs, and a
  reader checks that a block hashes to its CID); ``#identity`` and ``#account``. The seq
  is the line's number (1, 2, ...), so the same capture always has the same seqs, and the
  ``time`` is the line's time_us to the microsecond (relays write milliseconds; the
  microseconds keep each operation's time_us equal to the line's). ``write_frame_file``
  stores them once as a frame file, which is much cheaper to serve.

A wire tool like replay.py (whose pacing and idle tail it shares): it imports only
``captures``, ``dagcbor`` and ``replay``, never the store, ingest or the HTTP API.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import logging
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import zstandard
from aiohttp import WSCloseCode, web

from smalldp.captures import open_capture
from smalldp.dagcbor import CID, DecodeError, decode_prefix, encode, write_varint
from smalldp.replay import YIELD_EVERY, Pacer, idle_tail

log = logging.getLogger(__name__)

PATH = "/xrpc/com.atproto.sync.subscribeRepos"
_LENGTH = struct.Struct("<I")
_DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"
_COMMIT_HEADER = encode({"op": 1, "t": "#commit"})
_SIG = bytes(64)  # the commit block's signature: nobody checks a replay's


# ---------------------------------------------------------------------------- frames from lines


def _from_json(value: Any) -> Any:
    """A record in atproto's JSON form as DAG-CBOR values: ``{"$link"}`` a CID, ``{"$bytes"}``
    bytes; ValueError for floats (atproto data has none)."""
    if isinstance(value, dict):
        if len(value) == 1:
            if "$link" in value:
                return CID(cid_bytes(value["$link"]))
            if "$bytes" in value:
                text = value["$bytes"]
                return base64.b64decode(text + "=" * (-len(text) % 4))
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, float):
        raise ValueError("a float in a record")
    return value


def cid_bytes(text: str) -> bytes:
    """A CID string ("b" + base32) as binary; ValueError when it is not one."""
    if not isinstance(text, str) or not text.startswith("b"):
        raise ValueError(f"not a base32 CID: {str(text)[:60]!r}")
    body = text[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8))


def _cid_of(block: bytes) -> bytes:
    return _DAG_CBOR_SHA256 + hashlib.sha256(block).digest()


def _car(root: bytes, blocks: Iterable[tuple[bytes, bytes]]) -> bytes:
    header = encode({"roots": [CID(root)], "version": 1})
    parts = [write_varint(len(header)), header]
    for cid, data in blocks:
        parts += [write_varint(len(cid) + len(data)), cid, data]
    return b"".join(parts)


MST_DEPTH = 3
MST_FANOUT = 16
_FILLER: list[tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]] = []  # made once, on first use


def _filler() -> tuple[list[dict[str, Any]], list[tuple[bytes, bytes]]]:
    """Made-up MST entries for a leaf node, and the nodes above it (the same for every frame:
    nobody walks a replay's MST, and making them per frame cost most of the conversion)."""
    if not _FILLER:
        entries = []
        for i in range(MST_FANOUT - 1):
            fake = hashlib.sha256(bytes([i])).digest()
            entries.append({"k": fake[:6].hex().encode(), "p": 12 + i % 8,
                            "t": CID(_DAG_CBOR_SHA256 + fake) if i % 3 == 0 else None,
                            "v": CID(_DAG_CBOR_SHA256 + hashlib.sha256(fake).digest())})
        upper = []
        for level in range(1, MST_DEPTH):
            node = encode({"e": entries[:] + [entries[level]], "l": CID(_cid_of(bytes([level])))})
            upper.append((_cid_of(node), node))
        _FILLER.append((entries, upper))
    return _FILLER[0]


def _mst_path(path: str, leaf: CID) -> list[tuple[bytes, bytes]]:
    """MST-node-shaped blocks, root first, ending in the node that holds ``path``."""
    entries, upper = _filler()
    node = encode({"e": [{"k": path.encode(), "p": 0, "t": None, "v": leaf}, *entries], "l": None})
    return [*upper, (_cid_of(node), node)]


def rfc3339_us(time_us: int) -> str:
    """``time_us`` as an RFC 3339 UTC datetime with microseconds."""
    seconds, micros = divmod(time_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def event_frame(event: dict[str, Any], seq: int) -> bytes:
    """The relay frame for one Jetstream v1 event (see the module docstring); ValueError,
    KeyError or TypeError for an event that can't be one."""
    did, kind = event["did"], event["kind"]
    when = rfc3339_us(int(event["time_us"]))
    if kind == "commit":
        commit = event["commit"]
        action, path, rev = commit["operation"], f"{commit['collection']}/{commit['rkey']}", commit["rev"]
        blocks: list[tuple[bytes, bytes]] = []
        record_cid = None
        if action in ("create", "update"):
            record = encode(_from_json(commit["record"]))
            record_cid = _cid_of(record)
            blocks.append((record_cid, record))
        # The signed commit and the MST nodes from the root to the record: what a relay's CAR
        # slice holds besides the records, about 5 KB a frame as in the real corpus.
        mst_nodes = _mst_path(path, CID(record_cid) if record_cid else CID(_cid_of(path.encode())))
        signed = encode({"data": CID(mst_nodes[0][0]), "did": did, "prev": None, "rev": rev, "sig": _SIG,
                         "version": 3})
        commit_cid = _cid_of(signed)
        car = _car(commit_cid, [(commit_cid, signed), *mst_nodes, *blocks])
        op = {"action": action, "path": path, "cid": CID(record_cid) if record_cid else None}
        body: dict[str, Any] = {
            "seq": seq, "repo": did, "rev": rev, "time": when, "since": None, "rebase": False,
            "tooBig": False, "blobs": [], "commit": CID(commit_cid), "prevData": None,
            "blocks": car, "ops": [op]}
        return _COMMIT_HEADER + encode(body)
    if kind == "identity":
        identity = event.get("identity") or {}
        body = {"seq": seq, "did": did, "time": identity.get("time") or when}
        if identity.get("handle") is not None:
            body["handle"] = identity["handle"]
        return encode({"op": 1, "t": "#identity"}) + encode(body)
    if kind == "account":
        account = event["account"]
        body = {"seq": seq, "did": did, "time": account.get("time") or when, "active": account["active"]}
        if account.get("status") is not None:
            body["status"] = account["status"]
        return encode({"op": 1, "t": "#account"}) + encode(body)
    raise ValueError(f"unknown event kind {kind!r}")


def frames_from_lines(lines: Iterable[bytes]) -> Iterator[bytes]:
    """The frames of a JSONL capture's events, seq = line number; unusable lines are
    logged (the first few) and skipped."""
    bad = 0
    for seq, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield event_frame(orjson.loads(line), seq)
        except (ValueError, KeyError, TypeError) as exc:
            bad += 1
            if bad <= 20:
                log.warning("line %d: no frame for it (%s: %s)", seq, type(exc).__name__, exc)


# ---------------------------------------------------------------------------- frame files


def read_frames(stream: BinaryIO) -> Iterator[bytes]:
    """The frames of a stream of ``[u32 LE length][frame]``; ValueError when it is truncated."""
    while True:
        head = stream.read(4)
        if not head:
            return
        if len(head) < 4:
            raise ValueError("truncated frame length")
        (size,) = _LENGTH.unpack(head)
        frame = stream.read(size)
        if len(frame) < size:
            raise ValueError(f"truncated frame ({len(frame)} of {size} bytes)")
        yield frame


def write_frame_file(path: Path, frames: Iterable[bytes]) -> int:
    """Write ``frames`` as a frame file (zstd when ``path`` ends in .zst); returns how many."""
    n = 0
    with open(path, "wb") as raw:
        sink: Any = zstandard.ZstdCompressor(level=3).stream_writer(raw) if path.suffix == ".zst" else raw
        for frame in frames:
            sink.write(_LENGTH.pack(len(frame)))
            sink.write(frame)
            n += 1
        if sink is not raw:
            sink.close()
    return n


def is_frame_file(path: Path) -> bool:
    """Whether ``path`` holds frames (else it is read as JSONL): a frame starts with a
    CBOR map header ({op, t} or {op}), a JSON line with '{"'."""
    with open_capture(path) as stream:
        start = stream.read(5)
    if start[:2] == b'{"':
        return False
    return len(start) == 5 and start[4] in (0xA1, 0xA2)


def iter_frames(files: Sequence[Path]) -> Iterator[bytes]:
    """Every frame of ``files``, in order (frame files as they are, captures converted)."""
    for path in files:
        with open_capture(path) as stream:
            if is_frame_file(path):
                yield from read_frames(stream)
            else:
                yield from frames_from_lines(stream)


def frame_position(frame: bytes) -> tuple[int | None, int | None]:
    """(seq, time_us) of a frame, each None when it has none (or it does not decode)."""
    try:
        _, at = decode_prefix(frame)
        body, _ = decode_prefix(frame, at)
    except DecodeError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    seq = body.get("seq")
    stamp = body.get("time")
    when = None
    if isinstance(stamp, str):
        try:  # only for pacing: whole seconds and the fraction, UTC
            whole = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            fraction = stamp[20:].rstrip("Z") if stamp[19:20] == "." else ""
            when = whole * 1_000_000 + int((fraction + "000000")[:6])
        except ValueError:
            when = None
    return (seq if isinstance(seq, int) and not isinstance(seq, bool) else None), when


# ---------------------------------------------------------------------------- the server


class _Relay:
    def __init__(self, files: Sequence[Path], speed: float | None) -> None:
        self.files = tuple(files)
        self.speed = speed
        self._range: tuple[int, int] | None = None  # first and last seq, read when a cursor needs them
        self.sockets: set[web.WebSocketResponse] = set()

    def seq_range(self) -> tuple[int, int] | None:
        if self._range is None:
            seqs = [s for s, _ in map(frame_position, iter_frames(self.files)) if s is not None]
            self._range = (seqs[0], seqs[-1]) if seqs else (0, 0)
        return self._range

    async def subscribe(self, request: web.Request) -> web.StreamResponse:
        text = request.query.get("cursor")
        cursor = None
        if text:
            if not text.isdigit() or len(text) > 19:
                return web.json_response({"error": "InvalidRequest", "message": f"invalid cursor {text[:40]!r}"},
                                         status=400)
            cursor = int(text)
        ws = web.WebSocketResponse(compress=False, timeout=2.0)
        if not ws.can_prepare(request).ok:
            return web.json_response({"error": "InvalidRequest", "message": "expected a websocket upgrade"},
                                     status=400)
        await ws.prepare(request)
        self.sockets.add(ws)
        sender = asyncio.create_task(self._stream(ws, cursor))
        try:
            async for _ in ws:  # a relay reads nothing from its subscribers
                pass
        finally:
            sender.cancel()
            await asyncio.wait([sender])
            self.sockets.discard(ws)
        return ws

    async def _stream(self, ws: web.WebSocketResponse, cursor: int | None) -> None:
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            if cursor is not None:
                found = await loop.run_in_executor(None, self.seq_range)
                first, last = found or (0, 0)
                if cursor > last:
                    await ws.send_bytes(encode({"op": -1}) + encode(
                        {"error": "FutureCursor", "message": "Cursor in the future."}))
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"FutureCursor")
                    return
                if cursor < first - 1:
                    await ws.send_bytes(encode({"op": 1, "t": "#info"}) + encode(
                        {"name": "OutdatedCursor", "message": "Requested cursor exceeded limit. Possibly missing events"}))
            pacer = Pacer(self.speed)
            for n, frame in enumerate(iter_frames(self.files)):
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # sends only suspend when the socket is backed up
                if cursor is not None or self.speed is not None:
                    seq, when = frame_position(frame)
                    if cursor is not None and seq is not None and seq <= cursor:
                        continue
                    if when is not None:
                        await pacer.wait(when)
                await ws.send_bytes(frame)
                sent += 1
            log.info("end of the frames after %d sent; idling as a live tail", sent)
            await idle_tail(ws)
        except ConnectionError as exc:
            log.info("subscriber gone after %d frames: %s", sent, exc)
        except Exception:
            log.exception("relay replay failed")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"replay failed")

    async def close_all(self, app: web.Application) -> None:
        await asyncio.gather(*(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                               for ws in list(self.sockets)), return_exceptions=True)


def make_relay_app(files: list[Path], *, speed: float | None = None) -> web.Application:
    """The relay replay server: ``GET /xrpc/com.atproto.sync.subscribeRepos`` streams
    ``files`` as one stream; ``speed`` None: as fast as the client reads, X: X times real
    time (from the frames' ``time``)."""
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    relay = _Relay(files, speed)
    app = web.Application()
    app.router.add_get(PATH, relay.subscribe)
    app.on_shutdown.append(relay.close_all)
    return app
