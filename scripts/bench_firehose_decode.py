"""Relay firehose decode benchmark: raw subscribeRepos frames -> smalldp operations.

    .venv/bin/python scripts/bench_firehose_decode.py [--frames PATH] [--reps N] [--passes N]

Decodes the 150 real relay frames of ``corpus_frames.bin.zst`` (zstd of repeated
``[u32 little-endian length][frame]``; ../shared/fixtures/jetstream by default) end to end
into the operations ``smalldp.events`` makes (records as Jetstream's JSON, links,
derived links), once per candidate decoder, and prints one JSON object: per candidate
the median, min and max frames/s and operations/s over ``--reps`` repetitions of
``--passes`` passes over the frames, whether its operations equal the Jetstream v1
oracle's (``corpus_expected_v1.jsonl`` through ``events.decode_event``; time_us aside, which
a relay frame does not carry), and how it writes a record holding a byte string that
happens to be a CID next to a real CID link (``fidelity``).  Candidates whose library is
not installed are reported as such.  A measurement, not a test: figures depend on the
machine and its load.

Candidates:

* ``smalldp``: ``smalldp.events_firehose.decode_frame_firehose``, on smalldp's own DAG-CBOR
  decoder (``smalldp.dagcbor``).  The output's ``dagcbor_build`` says whether that module
  was the plain ``.py`` or the mypyc build: run the bench once as is and once with
  ``PYTHONPATH=$(scripts/build_compiled)`` to have both.
* ``cbrrr`` (the decoder smalldp used before it had its own; not a dependency, measured
  when installed): cbrrr for the frame and, in atjson mode, for the record blocks found with
  smalldp's ``find_block``; no msgspec checks of the body.
* ``libipld``: libipld's own frame and CAR decoders (``decode_dag_cbor_multi``,
  ``decode_car``, every block decoded), links and bytes told apart by the shape of the
  bytes (libipld returns both as ``bytes``).
* ``libipld_find_block``: libipld for the frame and for the record blocks only, found in
  the CAR with smalldp's ``find_block`` as the others do: decoder against decoder.
* ``atproto``: the ``atproto`` package's helpers as its docs use them: ``Frame.from_bytes``,
  ``parse_subscribe_repos_message`` (pydantic models of the frame), ``CAR.from_bytes``,
  ``car.blocks.get(op.cid)``; JSON as for libipld.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import json
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import zstandard

from smalldp.events import (
    Operation, PutRecord, account_operation, commit_operation, decode_event, identity_operation,
)
from smalldp.dagcbor import write_varint
from smalldp.timestamps import datetime_us

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "jetstream"
Decoder = Callable[[bytes], list[Operation]]


def read_frames(path: Path) -> list[bytes]:
    """The frames of a ``[u32 LE length][frame]...`` zstd file."""
    with path.open("rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    frames, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from("<I", raw, pos)
        frames.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    return frames


# --- candidate: smalldp (the module smalldp uses) -----------------------------------------


def smalldp_decoder() -> Decoder:
    from smalldp.events_firehose import OpsFrame, decode_frame_firehose

    def decode(frame: bytes) -> list[Operation]:
        result = decode_frame_firehose(frame)
        return list(result.ops) if isinstance(result, OpsFrame) else []
    return decode


def dagcbor_build() -> str:
    import smalldp.dagcbor

    return "compiled" if not smalldp.dagcbor.__file__.endswith(".py") else "interpreted"


# --- candidate: cbrrr, smalldp's decoder before it had its own ------------------------------


def cbrrr_decoder() -> Decoder:
    import cbrrr

    from smalldp.events_firehose import find_block

    def dumps(record: Any) -> bytes:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)

    def cid_text(cid: bytes) -> str:  # as the cbrrr-based module did: a link decoded in atjson mode
        head = bytes((0x40 | (len(cid) + 1),)) if len(cid) < 23 else bytes((0x58, len(cid) + 1))
        text: str = cbrrr.decode_dag_cbor(b"\xd8\x2a" + head + b"\x00" + cid, atjson_mode=True)["$link"]
        return text

    def decode(frame: bytes) -> list[Operation]:
        header, body = cbrrr.decode_multi_dag_cbor_in_violation_of_the_spec(frame)
        if header.get("op") != 1:
            return []
        if header.get("t") != "#commit":
            return _other_op(header["t"], body)
        car = body["blocks"]

        def block_of(cid: bytes) -> Any:
            block = find_block(car, cid)
            return None if block is None else cbrrr.decode_dag_cbor(bytes(block), atjson_mode=True)
        ops = [(op["action"], op["path"], None if op["cid"] is None else op["cid"].cid_bytes)
               for op in body["ops"]]
        return _ops_of(body["repo"], body["rev"], body["time"], ops, block_of, dumps, cid_text)
    return decode


# --- candidates built on libipld: links and bytes both come out as bytes --------------------

_CID_PREFIXES = (b"\x01\x71\x12\x20", b"\x01\x55\x12\x20")


def _libipld_json(encode_cid: Callable[[bytes], str]) -> Callable[[Any], bytes]:
    def default(value: Any) -> Any:
        if isinstance(value, bytes):
            # The only way to tell them apart after libipld: a 36-byte sha2-256 CIDv1 is
            # taken for a link. A byte string of that shape is written as a link (wrong).
            if len(value) == 36 and value[:4] in _CID_PREFIXES:
                return {"$link": encode_cid(value)}
            return {"$bytes": base64.b64encode(value).rstrip(b"=").decode()}
        raise TypeError(type(value).__name__)

    def dumps(record: Any) -> bytes:
        return orjson.dumps(record, default=default, option=orjson.OPT_SORT_KEYS)
    return dumps


def _ops_of(did: str, rev: str, time_text: str, ops: list[tuple[str, str, bytes | None]],
            block_of: Callable[[bytes], Any], dumps: Callable[[Any], bytes],
            cid_text: Callable[[bytes], str]) -> list[Operation]:
    time_us = datetime_us(time_text)
    out: list[Operation] = []
    for action, path, cid in ops:
        collection, _, rkey = path.partition("/")
        record, text = msgspec.Raw(b""), None
        if cid is not None and action != "delete":
            block = block_of(cid)
            if block is None:
                continue
            record, text = msgspec.Raw(dumps(block)), cid_text(cid)
        out.append(commit_operation(did, time_us, rev, action, collection, rkey, record, text))
    return out


def _other_op(t: str, body: dict[str, Any]) -> list[Operation]:
    time_us = datetime_us(body["time"])
    if t == "#identity":
        return [identity_operation(body["did"], time_us, body["seq"], body.get("handle"), body["time"])]
    if t == "#account":
        return [account_operation(body["did"], time_us, body["seq"], body["active"],
                                  body.get("status"), body["time"])]
    return []


def libipld_decoder() -> Decoder:
    import libipld

    dumps = _libipld_json(libipld.encode_cid)

    def decode(frame: bytes) -> list[Operation]:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("op") != 1:
            return []
        if header.get("t") != "#commit":
            return _other_op(header["t"], body)
        _, blocks = libipld.decode_car(body["blocks"])
        ops = [(op["action"], op["path"], op.get("cid")) for op in body["ops"]]
        return _ops_of(body["repo"], body["rev"], body["time"], ops, blocks.get, dumps, libipld.encode_cid)
    return decode


def libipld_find_decoder() -> Decoder:
    """libipld for the frame and the record blocks only, found with smalldp's find_block:
    the same CAR strategy as the smalldp and cbrrr candidates: they differ only by decoder."""
    import libipld

    from smalldp.events_firehose import find_block

    dumps = _libipld_json(libipld.encode_cid)

    def decode(frame: bytes) -> list[Operation]:
        header, body = libipld.decode_dag_cbor_multi(frame)
        if header.get("op") != 1:
            return []
        if header.get("t") != "#commit":
            return _other_op(header["t"], body)
        car = body["blocks"]

        def block_of(cid: bytes) -> Any:
            block = find_block(car, cid)
            return None if block is None else libipld.decode_dag_cbor(bytes(block))
        ops = [(op["action"], op["path"], op.get("cid")) for op in body["ops"]]
        return _ops_of(body["repo"], body["rev"], body["time"], ops, block_of, dumps, libipld.encode_cid)
    return decode


def atproto_decoder() -> Decoder:
    import libipld
    from atproto import CAR, models, parse_subscribe_repos_message
    from atproto_subscription.frames import Frame, MessageFrame

    dumps = _libipld_json(libipld.encode_cid)
    commit_type = models.ComAtprotoSyncSubscribeRepos.Commit
    identity_type = models.ComAtprotoSyncSubscribeRepos.Identity
    account_type = models.ComAtprotoSyncSubscribeRepos.Account

    def decode(frame: bytes) -> list[Operation]:
        message = Frame.from_bytes(frame)
        if not isinstance(message, MessageFrame):
            return []
        event = parse_subscribe_repos_message(message)
        if isinstance(event, commit_type):
            car = CAR.from_bytes(event.blocks)
            ops = [(op.action, op.path, op.cid) for op in event.ops]
            return _ops_of(event.repo, event.rev, event.time, ops, car.blocks.get, dumps, str)
        if isinstance(event, identity_type):
            time_us = datetime_us(event.time)
            return [identity_operation(event.did, time_us, event.seq, event.handle, event.time)]
        if isinstance(event, account_type):
            time_us = datetime_us(event.time)
            return [account_operation(event.did, time_us, event.seq, event.active, event.status, event.time)]
        return []
    return decode


CANDIDATES: dict[str, tuple[str, Callable[[], Decoder]]] = {
    "smalldp": ("smalldp", smalldp_decoder),
    "cbrrr": ("cbrrr", cbrrr_decoder),
    "libipld": ("libipld", libipld_decoder),
    "libipld_find_block": ("libipld", libipld_find_decoder),
    "atproto": ("atproto", atproto_decoder),
}


# --- measuring -----------------------------------------------------------------------------


def _key(op: Operation) -> tuple[Any, ...]:
    return (type(op).__name__, op.did, getattr(op, "rev", None), getattr(op, "collection", None),
            getattr(op, "rkey", None), getattr(op, "seq", None))


def _comparable(op: Operation) -> tuple[Any, ...]:
    # time_us is the relay's commit time here, Jetstream's receive time in the oracle.
    fields = [getattr(op, f) for f in op.__struct_fields__ if f not in ("time_us", "order_us", "body")]
    body = json.loads(op.body) if isinstance(op, PutRecord) else None
    return (*fields, body)


def agrees(ops: list[Operation], oracle: list[Operation]) -> dict[str, Any]:
    """How many of ``ops`` equal the oracle's operation for the same event."""
    expected = {_key(op): _comparable(op) for op in oracle}
    got = {_key(op): _comparable(op) for op in ops}
    equal = sum(1 for k, v in got.items() if expected.get(k) == v)
    return {"operations": len(ops), "oracle_operations": len(oracle), "equal_to_oracle": equal,
            "all_equal": equal == len(oracle) == len(ops)}


def fidelity(decode: Decoder) -> str:
    """The JSON a candidate writes for a record holding a CID-shaped byte string and a link."""
    from smalldp.dagcbor import CID

    cid = b"\x01\x71\x12\x20" + bytes(range(32))
    record: dict[str, Any] = {"$type": "x.y.z", "raw": cid, "link": CID(cid)}
    block = _encode(record)
    digest_cid = CID(b"\x01\x71\x12\x20" + hashlib.sha256(block).digest())
    car_header = _encode({"roots": [digest_cid], "version": 1})
    car = (write_varint(len(car_header)) + car_header
           + write_varint(36 + len(block)) + digest_cid.cid_bytes + block)
    body: dict[str, Any] = {"seq": 1, "repo": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "rev": "3mptbypluud2a",
            "time": "2026-07-04T14:38:07.517Z", "since": None, "blocks": car, "tooBig": False,
            "rebase": False, "blobs": [], "commit": digest_cid,
            "ops": [{"action": "create", "path": "x.y.z/3mptbyplj5d2a", "cid": digest_cid}]}
    frame = _encode({"op": 1, "t": "#commit"}) + _encode(body)
    try:
        ops = decode(frame)
    except Exception as exc:  # a candidate's failure is a finding, not a crash of the bench
        return f"error: {type(exc).__name__}: {exc}"
    return ops[0].body.decode() if ops and isinstance(ops[0], PutRecord) else "no operation"


def _encode(value: Any) -> bytes:
    """Canonical DAG-CBOR of the few kinds of value ``fidelity``'s frame holds."""
    from smalldp.dagcbor import CID

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        width = 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 0x100000000 else 8
        return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")
    if value is None or isinstance(value, bool):
        return {None: b"\xf6", True: b"\xf5", False: b"\xf4"}[value]
    if isinstance(value, int):
        return head(0, value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        return head(3, len(value.encode())) + value.encode()
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(map(_encode, value))
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return head(5, len(keys)) + b"".join(_encode(k) + _encode(value[k]) for k in keys)
    if isinstance(value, CID):
        return b"\xd8\x2a" + _encode(b"\x00" + value.cid_bytes)
    raise TypeError(type(value).__name__)


def measure(decoders: dict[str, Decoder], frames: list[bytes], reps: int, passes: int) -> dict[str, dict[str, Any]]:
    """Median/min/max frames/s and ops/s over ``reps`` timings of ``passes`` passes.

    The candidates take turns within each repetition, so a change in the machine's load
    (it is shared) falls on all of them rather than on whichever ran then.
    """
    n_ops = {name: sum(len(decode(f)) for f in frames) for name, decode in decoders.items()}  # also warms up
    rates: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(reps):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for _ in range(passes):
                for frame in frames:
                    decode(frame)
            rates[name].append(passes * len(frames) / (time.perf_counter() - start))
    out = {}
    for name, r in rates.items():
        median = statistics.median(r)
        out[name] = {
            "frames_per_s_median": round(median),
            "frames_per_s_min": round(min(r)),
            "frames_per_s_max": round(max(r)),
            "ops_per_s_median": round(median * n_ops[name] / len(frames)),
            "us_per_frame_median": round(1e6 / median, 2),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run every installed candidate; print the results as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=Path, default=FIXTURES / "corpus_frames.bin.zst")
    parser.add_argument("--oracle", type=Path, default=FIXTURES / "corpus_expected_v1.jsonl")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (the median is reported)")
    parser.add_argument("--passes", type=int, default=20, help="passes over the frames per repetition")
    parser.add_argument("--only", action="append", choices=sorted(CANDIDATES), help="candidates to run")
    args = parser.parse_args(argv)
    frames = read_frames(args.frames)
    oracle = [op for op in map(decode_event, args.oracle.read_bytes().splitlines()) if op is not None]
    out: dict[str, Any] = {
        "python": sys.version.split()[0], "machine": platform.machine(),
        "frames": len(frames), "frame_bytes": sum(map(len, frames)),
        "reps": args.reps, "passes": args.passes, "dagcbor_build": dagcbor_build(), "candidates": {},
    }
    decoders: dict[str, Decoder] = {}
    for name in args.only or list(CANDIDATES):
        dist, make = CANDIDATES[name]
        try:
            version = importlib.metadata.version(dist)
            decode = make()
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            out["candidates"][name] = {"installed": False, "error": str(exc)}
            continue
        ops = [op for frame in frames for op in decode(frame)]
        result: dict[str, Any] = {"installed": True, "version": version}
        result.update(agrees(ops, oracle))
        result["fidelity"] = fidelity(decode)
        out["candidates"][name] = result
        decoders[name] = decode
    for name, figures in measure(decoders, frames, args.reps, args.passes).items():
        out["candidates"][name].update(figures)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
