"""Configuration: one settings table, merged from defaults < TOML file < env < CLI.

Every setting is described once in :data:`SETTINGS`. Values are read from
(lowest to highest precedence) the table defaults, a TOML file given with
``--config PATH``, ``SMALLDP_<NAME>`` environment variables and CLI flags, then
validated. Any bad value raises :class:`ConfigError`, whose message names the
setting and where the value came from, e.g.::

    invalid setting listen (from SMALLDP_LISTEN): expected HOST:PORT, got 'abc'
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from smalldp.record_bodies import DEFAULT_BODY_COLLECTIONS

ENV_PREFIX = "SMALLDP_"
MAX_BATCH_EVENTS = 100_000
MAX_BATCH_MS = 60_000
_TYPES = ("path", "str", "int", "bool", "list", "listen", "listen_or_off", "choice", "url")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
# An NSID (at least three dot-separated segments) or a prefix wildcard `a.b.*`.
_NSID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*){2,}$")
_DID_RE = re.compile(r"^did:[a-z]+:[A-Za-z0-9._:%-]{1,2040}$")
_NSID_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)*\.\*$")


PUBLIC_JETSTREAMS = tuple(f"wss://jetstream{n}.{region}.bsky.network/subscribe"
                          for region in ("us-east", "us-west") for n in (1, 2))
LEGACY_DICTIONARY_URL = ("https://raw.githubusercontent.com/bluesky-social/jetstream/main/"
                         "pkg/models/zstd_dictionary")


class ConfigError(ValueError):
    """A bad setting value, config file or key; the message names the setting and its source."""


@dataclass(frozen=True)
class Setting:
    """One row of the settings table."""

    name: str
    type: str  # one of "path", "str", "int", "bool", "list", "listen", "listen_or_off", "choice", "url" (http or https)
    default: object
    help: str
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    @property
    def env_var(self) -> str:
        """The environment variable that sets this setting, e.g. ``SMALLDP_CACHE_MB``."""
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        """The CLI flag that sets this setting, e.g. ``--cache-mb``."""
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "path", "./data",
            "Directory holding the SQLite databases."),
    Setting("listen", "listen", "127.0.0.1:8080",
            "HOST:PORT the HTTP API listens on; IPv6 as [::1]:8080."),
    Setting("grpc_listen", "listen_or_off", "127.0.0.1:8081",
            "HOST:PORT `smalldp serve` answers bsky.Service on over gRPC (HTTP/2 cleartext: the official "
            "AppView's BSKY_DATAPLANE_URLS); IPv6 as [::1]:8081; off: no gRPC server (Connect on the HTTP "
            "port still answers)."),
    Setting("cache_mb", "int", 64, "SQLite page cache per connection, in MiB.", 1, 65536),
    Setting("mmap_mb", "int", 0,
            "SQLite mmap size in MiB; 0 (off) is safest on SD cards.", 0, 65536),
    # Upper bounds: a batch is held in memory and written to the WAL as one transaction,
    # and live ingest reads nothing while it commits; 50,000 events already peaked at
    # ~620 MB RSS (README), so 100,000 is the most a 4 GB Pi should be asked for. A minute
    # bounds what a power cut costs (replayed from the cursor) and how long the card
    # goes without a commit.
    Setting("batch_events", "int", 20000,
            "Events per write transaction; live ingest stops reading while one commits.", 1, MAX_BATCH_EVENTS),
    Setting("batch_ms", "int", 1000,
            "Max milliseconds after a commit before the batch received since is committed (live ingest).", 1, MAX_BATCH_MS),
    Setting("compaction_fanout", "int", 8, "Runs of the backlink index merged into one once a level holds this many.", 2, 64),
    Setting("merge_ms", "int", 250,
            "Milliseconds live ingest gives merge slices after each commit; a merge of any size goes on over many batches.",
            10, 60000),
    Setting("actor_cache", "int", 500_000,
            "Max DIDs kept in the in-memory ID cache.", 1000, 100_000_000),
    Setting("body_collections", "list", DEFAULT_BODY_COLLECTIONS,
            "Collections (NSIDs, `prefix.*` allowed) whose record bodies are stored; "
            "comma-separated in env and CLI. The default is what the official AppView reads as "
            "records (README: Record storage for the AppView)."),
    Setting("log_level", "choice", "info", "Log verbosity.",
            choices=("debug", "info", "warning", "error")),
    # One by default: CPython runs one thread's Python at a time, so more reader threads
    # only add hand-overs. Measured on the 10M-event store (closed loop, 4 clients):
    # getTimeline 621 requests/s with 1 thread, 479 with 2, 503 with 4.
    Setting("read_threads", "int", 1, "Threads answering queries (more only help slow disks).", 1, 64),
    # Processes, not threads: a worker's handlers do not share the serve process's
    # interpreter lock with live ingest and the event loop (appview/workers.py, README).
    Setting("rpc_processes", "int", 1,
            "Worker processes answering bsky.Service's store reads, besides one for big calls "
            "(thread walks, batches of hundreds); 0: on serve's reader threads instead.", 0, 16),
    Setting("jetstream", "list", PUBLIC_JETSTREAMS,
            "Jetstream endpoints (ws:// or wss:// URLs), tried in order, failing over to the next; "
            "a URL without a path gets the wire's path. Repeat the flag or comma-separate."),
    # Firehose wins over jetstream rather than the two being exclusive: jetstream has a
    # non-empty default (and deployments or test guards may set it in the environment), so
    # "both set" can't be told from "jetstream left as it was".
    Setting("firehose", "list", (),
            "Relay endpoints (ws:// or wss:// URLs, e.g. wss://relay1.us-east.bsky.network), tried in order, "
            "failing over to the next; a URL without a path gets /xrpc/com.atproto.sync.subscribeRepos. "
            "When set, serve follows these relays and the jetstream settings are not used. "
            "Repeat the flag or comma-separate."),
    Setting("verify_commits", "bool", False,
            "Check each commit's signature against its DID's signing key (fetched from plc_url or did:web): "
            "relay firehose commits that do not verify are skipped, backfilled repos whose commit does not "
            "verify are recorded failed (README: Commit verification)."),
    Setting("jetstream_wire", "choice", "v1",
            "Jetstream protocol: v1 (/subscribe, cursor = time_us) or v2 "
            "(/xrpc/network.bsky.jetstream.subscribeEvents, resumed by time).",
            choices=("v1", "v2")),
    Setting("wanted_collections", "list", (),
            "Collections to follow (NSIDs, `prefix.*` allowed); empty means all."),
    Setting("wanted_dids", "list", (),
            "Accounts to follow (at most 10,000 DIDs); empty means all."),
    Setting("compress", "bool", True,
            "Ask Jetstream for zstd-compressed messages (about a third of the bandwidth)."),
    Setting("zstd_dictionary", "str", "",
            "Path of the Jetstream v1 zstd dictionary. serve: empty fetches it once (sha256-checked) into data_dir; replay: empty serves uncompressed only."),
    Setting("zstd_dictionary_url", "str", LEGACY_DICTIONARY_URL,
            "Where the v1 dictionary is fetched from when it is not cached."),
    Setting("rewind_s", "int", 5,
            "Seconds before the committed cursor to resume from (replays are harmless).", 0, 86_400),
    Setting("liveness_s", "int", 30,
            "Reconnect when nothing arrives for this many seconds (0: off; pings still detect dead sockets).",
            0, 86_400),
    Setting("backoff_max_s", "int", 60, "Longest wait between reconnection attempts.", 1, 3600),
    Setting("max_message_bytes", "int", 4 << 20,
            "Largest (decompressed) message accepted; bigger ones are counted and skipped.",
            4096, 1 << 30),
    Setting("min_free_mb", "int", 256,
            "Live ingest pauses (the API keeps answering) while the data directory's filesystem has "
            "less free space than the larger of this and min_free_percent; it resumes by itself.",
            0, 1 << 20),
    Setting("min_free_percent", "int", 2,
            "Free-space floor as a percentage of the filesystem's size (see min_free_mb).", 0, 50),
    Setting("plc_url", "url", "https://plc.directory",
            "The PLC directory did:plc documents are resolved from (backfill, verify_commits)."),
    # Small by default: a backfill is a guest on other people's PDSes, and one writer thread
    # applies what the fetches bring, so more parallel fetches mostly wait for it.
    Setting("backfill_concurrency", "int", 4, "Repos `smalldp backfill` fetches at once.", 1, 64),
    Setting("backfill_timeout_s", "int", 30,
            "Seconds a backfill request may wait to connect, or between two reads, before it fails.", 1, 3600),
    Setting("backfill_retries", "int", 4,
            "Retries of a backfill request after a 429, a 5xx or a transport error (backing off).", 0, 20),
    Setting("backfill_max_car_mb", "int", 512,
            "Largest repo CAR a backfill downloads, in MiB; bigger repos are skipped and reported.", 1, 1 << 20),
    Setting("backfill_batch_records", "int", 5000,
            "Records of a repo applied per write transaction by a backfill (bounds its memory).", 100, MAX_BATCH_EVENTS),
    Setting("admin_socket", "str", "",
            "Unix socket (mode 0600) on which `smalldp serve` takes backfills from `smalldp backfill`; "
            "empty: admin.sock in data_dir; off: none."),
)
MAX_WANTED_DIDS = 10_000
_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
assert all(s.type in _TYPES for s in SETTINGS)


@dataclass(frozen=True)
class Settings:
    """Validated, typed configuration; one attribute per entry of :data:`SETTINGS`."""

    data_dir: Path
    listen: str
    grpc_listen: str
    cache_mb: int
    mmap_mb: int
    batch_events: int
    batch_ms: int
    compaction_fanout: int
    merge_ms: int
    actor_cache: int
    body_collections: tuple[str, ...]
    log_level: str
    read_threads: int
    rpc_processes: int
    jetstream: tuple[str, ...]
    firehose: tuple[str, ...]
    verify_commits: bool
    jetstream_wire: str
    wanted_collections: tuple[str, ...]
    wanted_dids: tuple[str, ...]
    compress: bool
    zstd_dictionary: str
    zstd_dictionary_url: str
    rewind_s: int
    liveness_s: int
    backoff_max_s: int
    max_message_bytes: int
    min_free_mb: int
    min_free_percent: int
    plc_url: str
    backfill_concurrency: int
    backfill_timeout_s: int
    backfill_retries: int
    backfill_max_car_mb: int
    backfill_batch_records: int
    admin_socket: str

    def admin_socket_path(self) -> Path | None:
        """Where the admin socket is (None: ``off``)."""
        value = self.admin_socket.strip()
        if value.lower() == "off":
            return None
        return Path(value) if value else Path(self.data_dir) / "admin.sock"

    def listen_host_port(self) -> tuple[str, int]:
        """Return ``listen`` split into (host, port); IPv6 hosts come back without brackets."""
        return parse_listen(self.listen)

    def grpc_host_port(self) -> tuple[str, int] | None:
        """``grpc_listen`` split into (host, port) as ``listen_host_port``; None when ``off``."""
        return None if self.grpc_listen == "off" else parse_listen(self.grpc_listen)


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[IPV6]:PORT``) into (host, port); raise ValueError if malformed."""
    host, sep, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        bad_host = not host or "[" in host or "]" in host
    else:
        bad_host = not host or any(c in host for c in ":[]")
    if not sep or bad_host or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def _convert(setting: Setting, raw: object) -> object:
    """Turn a raw value (a string from env/CLI, or a TOML value) into the setting's type."""
    kind = setting.type
    if kind == "int":
        if isinstance(raw, str):
            try:
                raw = int(raw.strip())
            except ValueError:
                raise ValueError(f"expected an integer, got {raw!r}") from None
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        lo, hi = setting.minimum, setting.maximum
        if (lo is not None and raw < lo) or (hi is not None and raw > hi):
            raise ValueError(f"must be between {lo} and {hi}, got {raw}")
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(f"expected true/false/1/0/yes/no, got {raw!r}")
    if kind == "list":
        if isinstance(raw, str):
            raw = [raw]
        if not (isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw)):
            raise ValueError(f"expected a list of strings, got {raw!r}")
        # A repeated flag gives a list; each item may itself be comma-separated.
        items = [part.strip() for x in raw for part in x.split(",")]
        items = [x for x in items if x]
        _check_list(setting.name, items)
        return tuple(items)
    if not isinstance(raw, str):
        raise ValueError(f"expected a string, got {raw!r}")
    if kind == "path":
        if not raw.strip():
            raise ValueError("expected a path, got ''")
        return Path(raw).expanduser()
    if kind == "listen":
        parse_listen(raw)
        return raw.strip()
    if kind == "listen_or_off":
        if raw.strip().lower() == "off":
            return "off"
        try:
            parse_listen(raw)
        except ValueError as exc:
            raise ValueError(f"{exc} or 'off'") from None
        return raw.strip()
    if kind == "url":
        parts = urlsplit(raw.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {raw!r}")
        return raw.strip().rstrip("/")
    if kind == "choice":
        text = raw.strip().lower()
        if text not in setting.choices:
            raise ValueError(f"expected one of {', '.join(setting.choices)}, got {raw!r}")
        return text
    return raw


def _check_list(name: str, items: list[str]) -> None:
    """Item syntax of the list settings that have one."""
    if name in ("body_collections", "wanted_collections"):
        for item in items:
            if not (_NSID_RE.match(item) or _NSID_PREFIX_RE.match(item)):
                raise ValueError(f"expected NSIDs (optionally ending in .*), got {item!r}")
    elif name == "wanted_dids":
        if len(items) > MAX_WANTED_DIDS:
            raise ValueError(f"at most {MAX_WANTED_DIDS:,} DIDs, got {len(items):,}")
        for item in items:
            if not _DID_RE.match(item):
                raise ValueError(f"expected DIDs, got {item[:80]!r}")
    elif name in ("jetstream", "firehose"):
        if not items and name == "jetstream":
            raise ValueError("expected at least one ws:// or wss:// URL")
        for item in items:
            parts = urlsplit(item)
            if parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ValueError(f"expected ws:// or wss:// URLs, got {item!r}")


def _read_toml(path: Path) -> dict[str, object]:
    """Parse a TOML config file, rejecting unknown keys."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid config file '{path}': {e}") from e
    for key in data:
        if key not in _BY_NAME:
            close = difflib.get_close_matches(key.replace("-", "_"), list(_BY_NAME), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown setting '{key}' in config file '{path}'{hint}")
    return data


def add_arguments(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add `--config` and a `--<name-with-dashes>` flag (default None, help from the table) for each named setting.

    Flags take raw strings (lists comma-separated); conversion and validation happen
    in :func:`load_settings`, so errors carry the usual message. ``--config`` is
    skipped if the parser already has it.
    """
    try:
        parser.add_argument("--config", metavar="PATH", default=None,
                            help="TOML config file (settings as top-level keys)")
    except argparse.ArgumentError:
        pass
    for name in names:
        s = _BY_NAME.get(name)
        if s is None:
            raise ValueError(f"unknown setting {name!r}")
        help_text = f"{s.help} Default: {_format_default(s)}; env {s.env_var}."
        if s.type == "bool":
            parser.add_argument(s.flag, dest=s.name, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=help_text.replace("%", "%%"))
            continue
        metavar = {"int": "N", "path": "PATH", "listen": "HOST:PORT", "listen_or_off": "HOST:PORT|off",
                   "list": "A,B,...", "url": "URL"}.get(
            s.type, "{" + ",".join(s.choices) + "}" if s.type == "choice" else "VALUE")
        parser.add_argument(s.flag, dest=s.name, default=None, metavar=metavar,
                            action="append" if s.type == "list" else "store",
                            help=help_text.replace("%", "%%"))


def load_settings(cli: Mapping[str, object] | argparse.Namespace | None = None,
                  config_path: str | os.PathLike[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < TOML < env < CLI (CLI values of None are ignored) and validate. If config_path is None and cli has a 'config' attribute/key, use it. env defaults to os.environ.

    Keys in ``cli`` that are not settings (subcommands, other flags) are ignored.
    Raises :class:`ConfigError` naming the setting and source of the first bad value.
    """
    env = os.environ if env is None else env
    cli_values: Mapping[str, object] = vars(cli) if isinstance(cli, argparse.Namespace) else (cli or {})
    if config_path is None:
        config_path = cli_values.get("config")  # type: ignore[assignment]

    # name -> (raw value, source description); later layers overwrite earlier ones.
    raw: dict[str, tuple[object, str]] = {s.name: (s.default, "default") for s in SETTINGS}
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        raw["data_dir"] = (state_dir, "STATE_DIRECTORY")
    if config_path is not None:
        path = Path(config_path).expanduser()
        for key, value in _read_toml(path).items():
            raw[key] = (value, f"config file '{path}'")
    for s in SETTINGS:
        if s.env_var in env:
            raw[s.name] = (env[s.env_var], s.env_var)
    for s in SETTINGS:
        value = cli_values.get(s.name)
        if value is not None:
            raw[s.name] = (value, s.flag)

    values: dict[str, object] = {}
    for s in SETTINGS:
        value, source = raw[s.name]
        try:
            values[s.name] = _convert(s, value)
        except ValueError as e:
            raise ConfigError(f"invalid setting {s.name} (from {source}): {e}") from None
    return Settings(**values)  # type: ignore[arg-type]


def with_overrides(settings: Settings, values: Mapping[str, object], allowed: Iterable[str],
                   source: str) -> Settings:
    """``settings`` with some of them replaced by ``values`` (raw, as from a flag), each
    converted and validated; ConfigError for a bad value or a name not ``allowed``."""
    allowed = set(allowed)
    changed: dict[str, object] = {}
    for name, value in values.items():
        if name not in allowed or name not in _BY_NAME:
            raise ConfigError(f"setting {name} cannot be given here (from {source})")
        try:
            changed[name] = _convert(_BY_NAME[name], value)
        except ValueError as e:
            raise ConfigError(f"invalid setting {name} (from {source}): {e}") from None
    return dataclasses.replace(settings, **changed)  # type: ignore[arg-type]


def _format_default(s: Setting) -> str:
    if s.type == "list":
        return ",".join(s.default) or "(empty)"  # type: ignore[arg-type]
    if s.name == "data_dir":
        return f"{s.default} (or $STATE_DIRECTORY)"
    return str(s.default)


def settings_table_markdown() -> str:
    """The settings table as Markdown (name | type | default | env var | help) for README."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| name | type | default | env var | help |", "| --- | --- | --- | --- | --- |"]
    for s in SETTINGS:
        kind = s.type
        if s.type == "int" and (s.minimum is not None or s.maximum is not None):
            kind = f"int ({s.minimum}..{s.maximum})"
        elif s.type == "choice":
            kind = "one of " + ", ".join(s.choices)
        elif s.type == "listen_or_off":
            kind = "listen or off"
        if s.type == "list":
            default = "<br>".join(f"`{x}`" for x in s.default) or "(empty)"  # type: ignore[attr-defined]
        elif s.name == "data_dir":
            default = f"`{s.default}` or `$STATE_DIRECTORY`"
        else:
            default = f"`{s.default}`"
        lines.append(f"| `{s.name}` | {cell(kind)} | {cell(default)} | `{s.env_var}` | {cell(s.help)} |")
    return "\n".join(lines) + "\n"
