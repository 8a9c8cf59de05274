"""Capture files: Jetstream v1 JSONL, plain or zstd-compressed (shared by import and replay)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import zstandard


def open_capture(path: Path) -> BinaryIO:
    """A capture file as a binary stream of lines; `.zst` files are decompressed on the fly."""
    raw = open(path, "rb")
    if path.suffix == ".zst":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return raw
