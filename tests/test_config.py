"""Tests for smalldp.config: defaults, precedence, parsing and error messages."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from smalldp.record_bodies import DEFAULT_BODY_COLLECTIONS
from smalldp.config import (
    SETTINGS,
    ConfigError,
    Settings,
    add_arguments,
    load_settings,
    settings_table_markdown,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "smalldp.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_table_matches_settings_dataclass() -> None:
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(Settings)]


def test_defaults() -> None:
    s = load_settings(env={})
    assert s.data_dir == Path("data")
    assert s.listen == "127.0.0.1:8080"
    assert s.listen_host_port() == ("127.0.0.1", 8080)
    assert (s.cache_mb, s.mmap_mb, s.batch_events, s.batch_ms) == (64, 0, 20000, 1000)
    assert (s.compaction_fanout, s.actor_cache, s.read_threads) == (8, 500000, 1)
    assert s.log_level == "info"
    assert s.body_collections[0] == "app.bsky.feed.post"
    assert s.body_collections == DEFAULT_BODY_COLLECTIONS and "app.bsky.feed.like" in s.body_collections


def test_state_directory_default_takes_first_path() -> None:
    s = load_settings(env={"STATE_DIRECTORY": "/var/lib/smalldp:/var/lib/other"})
    assert s.data_dir == Path("/var/lib/smalldp")
    # An explicit env var still wins over STATE_DIRECTORY.
    s = load_settings(env={"STATE_DIRECTORY": "/var/lib/smalldp", "SMALLDP_DATA_DIR": "/srv/dp"})
    assert s.data_dir == Path("/srv/dp")


def test_path_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_settings(env={"SMALLDP_DATA_DIR": "~/dp"}).data_dir == tmp_path / "dp"


def test_precedence_toml_env_cli(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'cache_mb = 10\nlisten = "0.0.0.0:9000"\nlog_level = "debug"\nread_threads = 2\n')
    s = load_settings(config_path=cfg, env={})
    assert (s.cache_mb, s.listen, s.log_level, s.read_threads) == (10, "0.0.0.0:9000", "debug", 2)

    env = {"SMALLDP_CACHE_MB": "20", "SMALLDP_LISTEN": "[::1]:9001", "SMALLDP_LOG_LEVEL": "warning"}
    s = load_settings(config_path=cfg, env=env)
    assert (s.cache_mb, s.listen, s.log_level, s.read_threads) == (20, "[::1]:9001", "warning", 2)
    assert s.listen_host_port() == ("::1", 9001)

    cli = {"cache_mb": "30", "listen": None, "log_level": "ERROR", "config": None}
    s = load_settings(cli, config_path=cfg, env=env)
    assert (s.cache_mb, s.listen, s.log_level, s.read_threads) == (30, "[::1]:9001", "error", 2)


def test_config_path_taken_from_cli(tmp_path: Path) -> None:
    cfg = write(tmp_path, "batch_ms = 250\n")
    assert load_settings({"config": str(cfg)}, env={}).batch_ms == 250
    assert load_settings(argparse.Namespace(config=cfg, command="run"), env={}).batch_ms == 250


def test_list_from_env_toml_and_cli(tmp_path: Path) -> None:
    env = {"SMALLDP_BODY_COLLECTIONS": " app.bsky.feed.post , com.example.* ,"}
    assert load_settings(env=env).body_collections == ("app.bsky.feed.post", "com.example.*")

    cfg = write(tmp_path, 'body_collections = ["app.bsky.feed.like", "app.bsky.graph.*"]\n')
    s = load_settings(config_path=cfg, env={})
    assert s.body_collections == ("app.bsky.feed.like", "app.bsky.graph.*")

    assert load_settings({"body_collections": "a.b.c"}, env={}).body_collections == ("a.b.c",)
    assert load_settings(env={"SMALLDP_BODY_COLLECTIONS": ""}).body_collections == ()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SMALLDP_LISTEN": "abc"},
         "invalid setting listen (from SMALLDP_LISTEN): expected HOST:PORT, got 'abc'"),
        ({"SMALLDP_LISTEN": ":8080"}, "invalid setting listen (from SMALLDP_LISTEN): expected HOST:PORT"),
        ({"SMALLDP_LISTEN": "::1:8080"}, "invalid setting listen (from SMALLDP_LISTEN): expected HOST:PORT"),
        ({"SMALLDP_LISTEN": "host:0"}, "invalid setting listen (from SMALLDP_LISTEN): port must be between 1 and 65535, got 0"),
        ({"SMALLDP_LISTEN": "host:70000"}, "invalid setting listen (from SMALLDP_LISTEN): port must be between 1 and 65535, got 70000"),
        ({"SMALLDP_CACHE_MB": "0"}, "invalid setting cache_mb (from SMALLDP_CACHE_MB): must be between 1 and 65536, got 0"),
        ({"SMALLDP_COMPACTION_FANOUT": "65"}, "invalid setting compaction_fanout (from SMALLDP_COMPACTION_FANOUT): must be between 2 and 64"),
        ({"SMALLDP_BATCH_MS": "1.5"}, "invalid setting batch_ms (from SMALLDP_BATCH_MS): expected an integer, got '1.5'"),
        ({"SMALLDP_LOG_LEVEL": "verbose"}, "invalid setting log_level (from SMALLDP_LOG_LEVEL): expected one of debug, info, warning, error, got 'verbose'"),
        ({"SMALLDP_BODY_COLLECTIONS": "app.bsky.feed.post,not an nsid"}, "invalid setting body_collections (from SMALLDP_BODY_COLLECTIONS): expected NSIDs"),
        ({"SMALLDP_DATA_DIR": ""}, "invalid setting data_dir (from SMALLDP_DATA_DIR)"),
    ],
)
def test_env_errors_name_setting_and_source(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert str(info.value).startswith(expected)


def test_cli_error_names_flag() -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting read_threads \(from --read-threads\): "
                                          r"must be between 1 and 64, got 100$"):
        load_settings({"read_threads": "100"}, env={})


def test_toml_errors_name_setting_and_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'actor_cache = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=cfg, env={})
    assert str(info.value) == f"invalid setting actor_cache (from config file '{cfg}'): expected an integer, got 'lots'"

    cfg = write(tmp_path, "mmap_mb = true\n")
    with pytest.raises(ConfigError, match=r"invalid setting mmap_mb \(from config file .*\): expected an integer, got True"):
        load_settings(config_path=cfg, env={})

    cfg = write(tmp_path, "listen = 8080\n")
    with pytest.raises(ConfigError, match=r"invalid setting listen \(from config file .*\): expected a string"):
        load_settings(config_path=cfg, env={})

    cfg = write(tmp_path, "body_collections = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"invalid setting body_collections \(from config file .*\): expected a list"):
        load_settings(config_path=cfg, env={})


def test_unknown_toml_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cache_mb = 8\ncache-mb = 9\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_path=cfg, env={})
    assert str(info.value) == f"unknown setting 'cache-mb' in config file '{cfg}' (did you mean 'cache_mb'?)"

    cfg = write(tmp_path, "[server]\nlisten = '1.2.3.4:5'\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'server' in config file"):
        load_settings(config_path=cfg, env={})


def test_malformed_toml(tmp_path: Path) -> None:
    cfg = write(tmp_path, "cache_mb = = 3\n")
    with pytest.raises(ConfigError, match=r"^invalid config file '.*smalldp\.toml': .*line 1"):
        load_settings(config_path=cfg, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"^cannot read config file '.*nope\.toml': No such file"):
        load_settings({"config": str(missing)}, env={})


def test_add_arguments_round_trip(tmp_path: Path) -> None:
    cfg = write(tmp_path, "batch_events = 500\nread_threads = 8\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser, ["listen", "read_threads", "body_collections", "log_level"])
    add_arguments(parser, ["cache_mb"])  # a second call does not re-add --config

    args = parser.parse_args([])
    assert all(getattr(args, n) is None for n in ("config", "listen", "read_threads", "cache_mb"))

    args = parser.parse_args([
        "--config", str(cfg), "--listen", "[::]:8443", "--read-threads", "2",
        "--body-collections", "app.bsky.feed.post,app.bsky.graph.*", "--cache-mb", "128",
    ])
    s = load_settings(args, env={"SMALLDP_READ_THREADS": "16", "SMALLDP_LOG_LEVEL": "debug"})
    assert s.listen_host_port() == ("::", 8443)
    assert s.read_threads == 2
    assert s.batch_events == 500
    assert s.cache_mb == 128
    assert s.log_level == "debug"
    assert s.body_collections == ("app.bsky.feed.post", "app.bsky.graph.*")

    help_text = parser.format_help()
    assert "--read-threads N" in help_text and "SMALLDP_READ_THREADS" in help_text

    with pytest.raises(ValueError, match="unknown setting 'nope'"):
        add_arguments(argparse.ArgumentParser(), ["nope"])


def test_bool_type_supported() -> None:
    from smalldp.config import Setting, _convert

    flag = Setting("flag", "bool", False, "A flag.")
    assert [_convert(flag, v) for v in ("true", "YES", "1", "false", "no", "0", True)] == [
        True, True, True, False, False, False, True]
    with pytest.raises(ValueError, match="expected true/false"):
        _convert(flag, "maybe")


def test_markdown_table() -> None:
    md = settings_table_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| name | type | default | env var | help |"
    assert len(lines) == 2 + len(SETTINGS)
    assert "| `cache_mb` | int (1..65536) | `64` | `SMALLDP_CACHE_MB` |" in md
    assert "`$STATE_DIRECTORY`" in md


def test_shipped_systemd_config_is_valid() -> None:
    """systemd/smalldp.toml must load as it is, and mean what its comments say."""
    path = Path(__file__).resolve().parents[1] / "systemd" / "smalldp.toml"
    settings = load_settings({}, config_path=path, env={})
    assert settings.listen == "0.0.0.0:8080"
    assert settings.wanted_collections == () and settings.wanted_dids == ()
    assert all(url.startswith("wss://") and url.endswith("/subscribe") for url in settings.jetstream)
