"""The zstd dictionaries Jetstream compresses with, and bounded decompression.

v1 (`compress=true`) uses one fixed "legacy" dictionary: it is fetched once from the
Jetstream project, checked against a pinned sha256 and cached in the data directory.
v2 serves its current dictionary from `network.bsky.jetstream.getZstdDictionary`; its id
is in the dictionary header and it is cached under that id. When no dictionary can be
had the caller runs uncompressed (and says so): compression saves bandwidth, never data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import zstandard

log = logging.getLogger(__name__)

LEGACY_SHA256 = "b8d77b46933aceecbdd5275a01241efc985c970c78162b8150cf67a26522f70c"
LEGACY_CACHE_NAME = "jetstream-v1.zdict"
DICT_MAGIC = 0xEC30A437  # RFC 8878 section 5: a structured dictionary starts with it
FETCH_TIMEOUT_S = 20
MAX_DICT_BYTES = 8 << 20


class DictionaryError(RuntimeError):
    """A dictionary that can't be had or isn't the expected one; the message says why."""


def dictionary_id(data: bytes) -> int:
    """The id in a structured zstd dictionary's header; raises DictionaryError if it is not one."""
    if len(data) < 8 or int.from_bytes(data[:4], "little") != DICT_MAGIC:
        raise DictionaryError("not a zstd dictionary (bad magic number)")
    return int.from_bytes(data[4:8], "little")


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "smalldp"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            data: bytes = response.read(MAX_DICT_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DictionaryError(f"cannot fetch {url}: {getattr(exc, 'reason', exc)}") from None
    if len(data) > MAX_DICT_BYTES:
        raise DictionaryError(f"{url}: more than {MAX_DICT_BYTES} bytes, not a dictionary")
    return data


def _write_cache(path: Path, data: bytes) -> None:
    # Write then rename: a crash never leaves a truncated dictionary behind.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def legacy_dictionary(data_dir: Path, local_path: str = "", url: str = "") -> bytes:
    """The v1 dictionary: from ``local_path`` if given, else the cache, else fetched from ``url``.

    A fetched or cached dictionary must have the pinned sha256. A local one chosen by the
    user may differ (a Jetstream-compatible server of their own, e.g. `smalldp replay`);
    that is logged. A frame made with another dictionary fails to decompress (zstd checks
    the dictionary id), so a wrong choice shows as decode errors, not as wrong data.
    Raises DictionaryError when it can't be had.
    """
    if local_path:
        try:
            data = Path(local_path).expanduser().read_bytes()
        except OSError as exc:
            raise DictionaryError(f"cannot read zstd dictionary {local_path}: {exc.strerror}") from None
        dictionary_id(data)
        if hashlib.sha256(data).hexdigest() != LEGACY_SHA256:
            log.warning("%s is not Jetstream's v1 dictionary (sha256 differs): fine for a server "
                        "of your own that uses it, not for the public Jetstream", local_path)
        return data
    cached = Path(data_dir) / LEGACY_CACHE_NAME
    if cached.is_file():
        data = cached.read_bytes()
        if hashlib.sha256(data).hexdigest() == LEGACY_SHA256:
            return data
        log.warning("%s: cached dictionary has the wrong sha256; fetching it again", cached)
    if not url:
        raise DictionaryError("no dictionary URL configured")
    data = _fetch(url)
    _check_legacy(data, url)
    _write_cache(cached, data)
    log.info("fetched the Jetstream v1 zstd dictionary from %s into %s", url, cached)
    return data


def _check_legacy(data: bytes, source: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != LEGACY_SHA256:
        raise DictionaryError(f"{source}: sha256 {digest[:16]}... is not the pinned Jetstream v1 "
                              f"dictionary ({LEGACY_SHA256[:16]}...)")


def v2_dictionary_url(endpoint: str) -> str:
    """The getZstdDictionary URL on the HTTP side of a v2 websocket endpoint."""
    parts = urlsplit(endpoint)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "/xrpc/network.bsky.jetstream.getZstdDictionary", "", ""))


def v2_dictionary(data_dir: Path, endpoint: str) -> tuple[int, bytes]:
    """The current v2 dictionary of ``endpoint`` as (id, bytes), cached in ``data_dir`` by id."""
    data = _fetch(v2_dictionary_url(endpoint))
    dict_id = dictionary_id(data)
    _write_cache(Path(data_dir) / f"jetstream-v2-{dict_id}.zdict", data)
    return dict_id, data


class Decompressor:
    """One reused zstd decompressor with a dictionary and a bound on output size."""

    def __init__(self, dictionary: bytes, max_output: int) -> None:
        self.dict_id = dictionary_id(dictionary)
        self._dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(dictionary))
        self.max_output = max_output

    def decompress(self, frame: bytes) -> bytes:
        """Decompress one frame; raises ValueError if it is not one or is bigger than the bound."""
        try:
            size = zstandard.frame_content_size(frame)
            if size > self.max_output:
                raise ValueError(f"decompresses to {size} bytes, more than {self.max_output}")
            # With the size in the frame header zstandard allocates exactly that; without
            # it, max_output_size is the bound.
            data: bytes = self._dctx.decompress(frame, max_output_size=self.max_output)
            return data
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd frame of this dictionary: {exc}") from None
