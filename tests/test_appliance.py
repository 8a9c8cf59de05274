"""The appliance: the systemd unit, scripts/install.sh, cloud-init files, the image layer.

* The units (smalldp.service, smalldp-appview.service) pass `systemd-analyze verify` with
  nothing on stderr and rate <= 2.0 in `systemd-analyze security --offline=true`; the
  AppView's keeps smalldp's sandbox but for MemoryDenyWriteExecute.
* systemd/appview.env parses as an EnvironmentFile, holds every setting the AppView needs,
  and the pinned @atproto/bsky's ServerConfig.readEnv accepts it, aimed at smalldp's
  default grpc_listen.
* appliance/user-data is valid for Debian's `cloud-init schema`; network-config converts.
* scripts/install.sh runs for real inside a Debian Bookworm root (mmdebstrap, cached under
  ~/.cache/smalldp-ci/) in a chroot where systemd does not run: files, user, enablement
  symlink, and the installed smalldp answering /xrpc/_health on 127.0.0.1; then an upgrade
  that keeps an edited config, --uninstall (data kept), the image bake script, the
  cloud-init first-boot script, and --purge. The first install is `install.sh --appview`:
  Debian's Node, the pinned @atproto/bsky (npm ci), /etc/smalldp/appview.env with a fresh
  key, the AppView unit; the AppView then runs as that unit would (ExecStart, its
  environment and env file, an unprivileged uid, stdin /dev/null) against the installed
  smalldp serve's gRPC port: /xrpc/_health 200, getProfile of an unknown DID its own 400,
  no connection attempted off loopback (loopback_guard.cjs preloaded). The upgrade keeps
  node_modules and the env file; `--appview --uninstall` removes the AppView alone.

Debian packages come from scripts/_system_deps.sh. A test skips only when a prerequisite
truly cannot be had (no root nor sudo, a tool apt could not install), with a warning
that says which, so the skip shows in the run's summary.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Iterator

import pytest

from smalldp.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "smalldp.service"
APPVIEW_UNIT = ROOT / "systemd" / "smalldp-appview.service"
APPVIEW_ENV = ROOT / "systemd" / "appview.env"
APPVIEW_EXEC = "/usr/bin/node"
LOOPBACK_GUARD = "/src/conformance/node/loopback_guard.cjs"
# The settings ServerConfig.readEnv, the launcher or the appliance needs (appliance/README.md).
APPVIEW_REQUIRED = ("BSKY_DATAPLANE_URLS", "BSKY_DATAPLANE_HTTP_VERSION", "BSKY_DID_PLC_URL", "BSKY_SERVER_DID",
                    "BSKY_SERVICE_SIGNING_KEY", "BSKY_BSYNC_URL", "MOD_SERVICE_DID", "BSKY_PORT",
                    "SMALLDP_APPVIEW_HOST", "BSKY_PUBLIC_URL", "BSKY_CDN_URL")
EXAMPLE_CONFIG = ROOT / "systemd" / "smalldp.toml"
USER_DATA = ROOT / "appliance" / "user-data"
NETWORK_CONFIG = ROOT / "appliance" / "network-config"
LAYER = ROOT / "appliance" / "rpi-image-gen" / "layer" / "smalldp.yaml"
IMAGE_CONFIG = ROOT / "appliance" / "rpi-image-gen" / "config" / "smalldp.yaml"
BAKE = ROOT / "appliance" / "rpi-image-gen" / "bake.sh"
INSTALL = ROOT / "scripts" / "install.sh"
EXEC_START = "/opt/smalldp/.venv/bin/smalldp"
SECURITY_MAX = 2.0

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smalldp-ci"
MIRROR = os.environ.get("SMALLDP_CI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the cached root holds; a change here builds a new one.
BASE_RECIPE = ("bookworm", "minbase", "systemd,python3")


def _skip_loudly(reason: str) -> None:
    warnings.warn(f"APPLIANCE TEST SKIPPED: {reason}", stacklevel=2)
    pytest.skip(reason)


def _tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        _skip_loudly(f"{name} is not installed (scripts/_system_deps.sh installs it with apt-get)")
    return path  # type: ignore[return-value]


def _root_prefix() -> list[str]:
    """[] as root, sudo -n otherwise; skips when neither can run privileged commands."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    _skip_loudly("chroot and mount need root or password-less sudo")
    return []


def _system_python() -> str:
    """Debian's python3, which has PyYAML once cloud-init is installed."""
    _tool("cloud-init")
    return "/usr/bin/python3"


def _yaml(path: Path) -> object:
    import json
    out = subprocess.run([_system_python(), "-c",
                          "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                          str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


# --- the unit -------------------------------------------------------------------------


def _parse_unit(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    return _parse_unit(unit.read_text())


def test_unit_has_what_the_appliance_needs() -> None:
    s = _unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert int(one["WatchdogSec"]) > 0
    assert one["Restart"] == "on-failure"
    assert one["StateDirectory"] == "smalldp"
    assert one["ConfigurationDirectory"] == "smalldp"
    assert one["User"] == "smalldp" and "DynamicUser" not in s
    assert one["CapabilityBoundingSet"] == ""
    assert one["UMask"] == "0077"
    assert one["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges"):
        assert one[key] == "yes", key
    assert "@system-service" in s["SystemCallFilter"]
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert one["ExecStart"].split()[0] == EXEC_START
    assert "--config /etc/smalldp/smalldp.toml" in one["ExecStart"]


@pytest.mark.parametrize("source, exec_start", [(UNIT, EXEC_START), (APPVIEW_UNIT, APPVIEW_EXEC)],
                         ids=["smalldp", "smalldp-appview"])
def test_unit_verifies_without_warnings(tmp_path: Path, source: Path, exec_start: str) -> None:
    """`systemd-analyze verify` exits 0 and says nothing about the unit.

    It checks that ExecStart exists: the copy verified here points it at a stand-in
    executable (the chroot test verifies the real path in an installed root).
    """
    analyze = _tool("systemd-analyze")
    stand_in = tmp_path / Path(exec_start).name
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / source.name
    text = source.read_text()
    assert text.count(f"ExecStart={exec_start} ") == 1
    unit.write_text(text.replace(f"ExecStart={exec_start} ", f"ExecStart={stand_in} "))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "smalldp" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


@pytest.mark.parametrize("unit", [UNIT, APPVIEW_UNIT], ids=["smalldp", "smalldp-appview"])
def test_unit_security_exposure_at_most_2(unit: Path) -> None:
    analyze = _tool("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}:\s*([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security {unit.name}: {score}")
    assert score <= SECURITY_MAX, result.stdout


def test_appview_unit_has_what_the_appliance_needs() -> None:
    s = _unit_settings(APPVIEW_UNIT)
    one = {k: v[-1] for k, v in s.items()}
    assert one["ExecStart"] == f"{APPVIEW_EXEC} /opt/smalldp/appview/appview.cjs"
    assert one["WorkingDirectory"] == "/opt/smalldp/appview"
    assert one["EnvironmentFile"] == "/etc/smalldp/appview.env"
    assert "NODE_ENV=production" in s["Environment"]
    assert one["DynamicUser"] == "yes" and "User" not in s and "StateDirectory" not in s
    assert one["CacheDirectory"] == "smalldp-appview"
    assert one["Restart"] == "on-failure"
    assert "smalldp.service" in one["After"].split() and "smalldp.service" in one["Wants"].split()
    # smalldp.service's sandbox, setting for setting, but MemoryDenyWriteExecute: V8's JIT.
    ours = _unit_settings(UNIT)
    sandbox = ("NoNewPrivileges", "CapabilityBoundingSet", "AmbientCapabilities", "ProtectSystem", "ProtectHome",
               "PrivateTmp", "PrivateDevices", "PrivateUsers", "PrivateIPC", "PrivateMounts", "DevicePolicy",
               "ProtectHostname", "ProtectClock", "ProtectKernelTunables", "ProtectKernelModules",
               "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc", "ProcSubset", "KeyringMode",
               "RemoveIPC", "LockPersonality", "RestrictAddressFamilies", "RestrictNamespaces",
               "RestrictRealtime", "RestrictSUIDSGID", "SystemCallArchitectures", "SystemCallFilter",
               "SystemCallErrorNumber", "UMask")
    for key in sandbox:
        assert s.get(key) == ours[key], key
    assert "MemoryDenyWriteExecute" not in s


# --- the AppView's settings ------------------------------------------------------------


def _parse_env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile read as systemd reads plain lines: `NAME=value`, blank lines and
    lines starting with # or ; skipped, whitespace around name and value dropped. Quotes,
    backslashes and continuation lines (which systemd interprets) are refused here, so the
    files this reads mean the same to both."""
    env: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        name, eq, value = stripped.partition("=")
        assert eq and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()), f"line {n}: {line!r}"
        value = value.strip()
        assert not re.search(r"[\\'\"]", value), f"line {n}: quotes or backslashes: {line!r}"
        env[name.strip()] = value
    return env


def test_appview_env_example_has_every_setting() -> None:
    env = _parse_env_file(APPVIEW_ENV.read_text())
    for name in APPVIEW_REQUIRED:
        assert name in env, name
        assert env[name] or name == "BSKY_SERVICE_SIGNING_KEY", name  # the key: install.sh's
    assert env["BSKY_SERVICE_SIGNING_KEY"] == ""  # never a key in the repository
    assert env.get("NODE_ENV") not in ("test", "development")
    assert env["BSKY_DATAPLANE_HTTP_VERSION"] == "2"
    # aimed at smalldp's default gRPC port
    grpc_host, grpc_port = load_settings(config_path=EXAMPLE_CONFIG,
                                         env={"STATE_DIRECTORY": "/var/lib/smalldp"}).grpc_host_port()  # type: ignore[misc]
    assert env["BSKY_DATAPLANE_URLS"] == f"http://{grpc_host}:{grpc_port}"
    assert env["SMALLDP_APPVIEW_HOST"] == "0.0.0.0" and env["BSKY_PORT"] == "2584"
    # a PDS forwarding to <server DID>#bsky_appview may use either as the JWT audience
    assert env["BSKY_ALT_AUDIENCE_DIDS"] == env["BSKY_SERVER_DID"] + "#bsky_appview"


def test_appview_env_example_is_accepted_by_the_appview(tmp_path: Path) -> None:
    """The pinned package's own ServerConfig.readEnv, given the example as the unit gives
    it (plus a key), reads what the file says."""
    import json
    from appview_harness import NODE_DIR, node_bin
    env = _parse_env_file(APPVIEW_ENV.read_text())
    env["BSKY_SERVICE_SIGNING_KEY"] = "11" * 32
    script = """
const { ServerConfig } = require('@atproto/bsky')
const c = ServerConfig.readEnv()
console.log(JSON.stringify({dataplaneUrls: c.dataplaneUrls, dataplaneHttpVersion: c.dataplaneHttpVersion,
  didPlcUrl: c.didPlcUrl, serverDid: c.serverDid, alternateAudienceDids: c.alternateAudienceDids, port: c.port,
  publicUrl: c.publicUrl, cdnUrl: c.cdnUrl, bsyncUrl: c.bsyncUrl, modServiceDid: c.modServiceDid,
  debugMode: c.debugMode, blobCacheLocation: c.blobCacheLocation || null}))
"""
    result = subprocess.run([node_bin(), "-e", script], cwd=NODE_DIR, capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_ENV": "production", **env})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config["dataplaneUrls"] == [env["BSKY_DATAPLANE_URLS"]]
    assert config["dataplaneHttpVersion"] == "2"
    assert config["serverDid"] == env["BSKY_SERVER_DID"]
    assert config["alternateAudienceDids"] == [env["BSKY_ALT_AUDIENCE_DIDS"]]
    assert config["port"] == 2584 and config["didPlcUrl"] == "https://plc.directory"
    assert config["cdnUrl"] == "https://cdn.bsky.app/img" and config["blobCacheLocation"] is None
    assert config["bsyncUrl"] == env["BSKY_BSYNC_URL"] and config["modServiceDid"] == env["MOD_SERVICE_DID"]
    assert config["debugMode"] is False


def test_sysusers_snippet_creates_the_user(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    snippet = ROOT / "systemd" / "smalldp.sysusers"
    result = subprocess.run([sysusers, f"--root={tmp_path}", str(snippet)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    line = next(l for l in passwd.splitlines() if l.startswith("smalldp:"))
    name, _, uid, gid, _, home, shell = line.split(":")
    assert int(uid) < 1000 and home == "/var/lib/smalldp" and shell == "/usr/sbin/nologin"
    assert f"smalldp:x:{gid}:" in (tmp_path / "etc" / "group").read_text()


# --- configuration -----------------------------------------------------------------------


def test_example_config_is_valid_for_smalldp_serve() -> None:
    settings = load_settings(config_path=EXAMPLE_CONFIG, env={"STATE_DIRECTORY": "/var/lib/smalldp"})
    assert settings.listen == "0.0.0.0:8080"
    assert str(settings.data_dir) == "/var/lib/smalldp"


def _user_data_file(path: str) -> str:
    data = _yaml(USER_DATA)
    assert isinstance(data, dict)
    return next(f["content"] for f in data["write_files"] if f["path"] == path)


def test_user_data_is_valid_cloud_config() -> None:
    cloud_init = _tool("cloud-init")
    result = subprocess.run([cloud_init, "schema", "--config-file", str(USER_DATA)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr
    assert USER_DATA.read_text().startswith("#cloud-config\n")


def test_user_data_config_and_firstboot_script(tmp_path: Path) -> None:
    toml = tmp_path / "smalldp.toml"
    toml.write_text(_user_data_file("/etc/smalldp/smalldp.toml"))
    settings = load_settings(config_path=toml, env={"STATE_DIRECTORY": "/var/lib/smalldp"})
    assert settings.listen == "0.0.0.0:8080"
    script = tmp_path / "firstboot"
    script.write_text(_user_data_file("/usr/local/sbin/smalldp-firstboot"))
    assert "set -euo pipefail" in script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_network_config_converts(tmp_path: Path) -> None:
    """Raspberry Pi OS hands network-config to netplan (which drives NetworkManager);
    Bookworm's cloud-init 22.4 renders v2 Wi-Fi only for netplan, so that is what runs."""
    cloud_init = _tool("cloud-init")
    for kind in ("netplan",):
        out = tmp_path / kind
        result = subprocess.run([cloud_init, "devel", "net-convert", "-p", str(NETWORK_CONFIG), "-k", "yaml",
                                 "-D", "debian", "-O", kind, "-d", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        written = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
        assert "MyWiFiNetwork" in written and ("wlan0" in written), written


def test_image_layer_and_config() -> None:
    layer_text = LAYER.read_text()
    meta = layer_text.split("# METABEGIN\n", 1)[1].split("# METAEND\n", 1)[0]
    assert "# X-Env-Layer-Name: smalldp\n" in meta and "# X-Env-VarPrefix: smalldp\n" in meta
    layer = _yaml(LAYER)
    assert isinstance(layer, dict)
    hooks = layer["mmdebstrap"]["customize-hooks"]
    assert any("appliance/rpi-image-gen/bake.sh" in h and '"$1"' in h for h in hooks)
    config = _yaml(IMAGE_CONFIG)
    assert isinstance(config, dict)
    assert config["layer"]["app"] == "smalldp"
    for var in config["smalldp"]:
        assert f"# X-Env-Var-{var}:" in meta, var
    for script in (BAKE, INSTALL, ROOT / "scripts" / "_system_deps.sh"):
        assert os.access(script, os.X_OK), script
        assert "set -euo pipefail" in script.read_text(), script
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, script


# --- install.sh in a Debian Bookworm chroot ----------------------------------------------


class Chroot:
    """A throwaway copy of the cached Bookworm root, with /proc, /sys, /dev mounted,
    the checkout read-only at /src and pip/apt caches shared across runs."""

    def __init__(self, path: Path, sudo: list[str]) -> None:
        self.path, self.sudo = path, sudo
        self.mounts: list[Path] = []
        self.env: list[str] = []

    def setup(self, base: Path) -> None:
        path = self.path
        self.run_host(["cp", "-a", "--reflink=auto", str(base), str(path)])
        self.mount(["-t", "proc", "proc"], "proc")
        self.mount(["-t", "sysfs", "sysfs"], "sys")
        self.mount(["--bind", "/dev"], "dev")
        self.mount(["--bind", str(ROOT)], "src", read_only=True)
        for cache, inside in (("pip", "root/.cache/pip"), ("apt-archives", "var/cache/apt/archives"),
                              ("npm", "root/.npm")):
            (CACHE / cache).mkdir(parents=True, exist_ok=True)
            self.mount(["--bind", str(CACHE / cache)], inside)
        # Trust what the host trusts (a CI network may re-sign TLS with its own CA);
        # pip reads it through PIP_CERT, leaving the root's own CA store as Debian made it.
        host_ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        self.env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        if host_ca.is_file():
            self.run_host(["cp", str(host_ca), str(path / "root/host-ca.pem")])
            # pip, and npm (install.sh --appview) through node's extra CAs
            self.env += ["PIP_CERT=/root/host-ca.pem", "NODE_EXTRA_CA_CERTS=/root/host-ca.pem"]
        for name in ("PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "NPM_CONFIG_REGISTRY"):
            if os.environ.get(name, "").partition(":")[0] in ("http", "https") or (
                    name == "PIP_DEFAULT_TIMEOUT" and os.environ.get(name)):
                self.env.append(f"{name}={os.environ[name]}")

    def run_host(self, cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.sudo, *cmd], capture_output=True, text=True, check=True, **kw)  # type: ignore[call-overload]

    def mount(self, args: list[str], inside: str, read_only: bool = False) -> None:
        target = self.path / inside
        self.run_host(["mkdir", "-p", str(target)])
        self.run_host(["mount", *args, str(target)])
        self.mounts.append(target)
        if read_only:
            self.run_host(["mount", "-o", "remount,bind,ro", str(target)])

    def sh(self, script: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run a bash script inside the chroot as root with a clean environment."""
        result = subprocess.run([*self.sudo, "chroot", str(self.path), "/usr/bin/env", "-i", *self.env,
                                 "/bin/bash", "-c", "set -euo pipefail\n" + script],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"in chroot: {script}\nrc={result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def exists(self, path: str, test: str = "-e") -> bool:
        return self.sh(f"test {test} {path}", check=False).returncode == 0

    def close(self) -> None:
        for target in reversed(self.mounts):
            if subprocess.run([*self.sudo, "umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run([*self.sudo, "umount", "-l", str(target)], capture_output=True)
        # Never delete through a mount (the checkout, the caches): check none is left.
        mounted = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        left = [m for m in mounted if m == str(self.path) or m.startswith(str(self.path) + "/")]
        assert not left, f"still mounted, not deleting {self.path}: {left}"
        subprocess.run([*self.sudo, "rm", "-rf", "--one-file-system", str(self.path)], capture_output=True)


def _base_root(sudo: list[str]) -> Path:
    """The Bookworm root, built once with mmdebstrap and kept in the cache."""
    mmdebstrap = _tool("mmdebstrap")
    suite, variant, include = BASE_RECIPE
    base = CACHE / f"{suite}-{variant}-{include.replace(',', '+')}"
    if (base / ".complete").exists():
        return base
    CACHE.mkdir(parents=True, exist_ok=True)
    building = base.with_name(base.name + ".building")
    subprocess.run([*sudo, "rm", "-rf", "--one-file-system", str(building)], check=True)
    result = subprocess.run([*sudo, mmdebstrap, "--quiet", f"--variant={variant}", f"--include={include}",
                             suite, str(building), MIRROR], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"mmdebstrap failed:\n{result.stdout}\n{result.stderr}"
    subprocess.run([*sudo, "touch", str(building / ".complete")], check=True)
    subprocess.run([*sudo, "mv", str(building), str(base)], check=True)
    return base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _smalldp_serving(ch: Chroot) -> Iterator[tuple[int, int, int]]:
    """The installed smalldp serving in the chroot as user smalldp, as the unit would (config,
    STATE_DIRECTORY), on free 127.0.0.1 ports (HTTP, gRPC), with Jetstream and the PLC
    directory pointed at a closed local port; yields (http port, grpc port, closed port)
    once /xrpc/_health answers; stopped with SIGTERM, which must exit 0."""
    import json
    port, grpc_port, dead_port = _free_port(), _free_port(), _free_port()
    proc = subprocess.Popen(
        [*ch.sudo, "chroot", "--userspec=smalldp:smalldp", str(ch.path), "/usr/bin/env", "-i",
         "PATH=/usr/bin:/bin", "HOME=/var/lib/smalldp", "STATE_DIRECTORY=/var/lib/smalldp",
         EXEC_START, "serve", "--config", "/etc/smalldp/smalldp.toml",
         "--listen", f"127.0.0.1:{port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
         "--jetstream", f"ws://127.0.0.1:{dead_port}/subscribe", "--plc-url", f"http://127.0.0.1:{dead_port}",
         "--no-compress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/xrpc/_health", timeout=5) as r:
                    json.loads(r.read())
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"smalldp did not answer:\n{proc.communicate(timeout=10)[0]}")
                time.sleep(0.2)
        yield port, grpc_port, dead_port
    finally:
        output = _stop(proc)
    assert proc.returncode == 0, output


def _serve_and_check_health(ch: Chroot) -> dict:
    """smalldp serving in the chroot (_smalldp_serving): its /xrpc/_health."""
    import json
    with _smalldp_serving(ch) as (port, _, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/xrpc/_health", timeout=5) as r:
            health = json.loads(r.read())
    assert health["status"] == "ok", health
    return health


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM, then (after 30 s) SIGKILL; the process's output."""
    proc.terminate()
    try:
        return proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0]


def _get_json(url: str) -> tuple[int, dict]:
    import json
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _check_appview_on_smalldp(ch: Chroot) -> None:
    """The installed AppView started as smalldp-appview.service would start it: its
    ExecStart in its WorkingDirectory, its Environment= and EnvironmentFile (parsed as
    systemd does), an unprivileged uid from DynamicUser's range, stdin /dev/null; only the
    address, port, DataPlane and PLC URLs changed, to free and closed loopback ports, and
    loopback_guard.cjs preloaded (NODE_OPTIONS) to show nothing tries to leave 127.0.0.1.
    Against the installed smalldp serve: /xrpc/_health 200 (its Ping reaches smalldp's
    gRPC port), getProfile of an unknown DID the AppView's own 400; SIGTERM exits 0."""
    unit = _parse_unit(ch.sh("cat /etc/systemd/system/smalldp-appview.service").stdout)
    env = dict(e.split("=", 1) for e in unit.get("Environment", []))
    env.update(_parse_env_file(ch.sh("cat " + unit["EnvironmentFile"][-1]).stdout))
    assert re.fullmatch(r"[0-9a-f]{64}", env["BSKY_SERVICE_SIGNING_KEY"])
    exec_start = unit["ExecStart"][-1].split()
    with _smalldp_serving(ch) as (_, grpc_port, dead_port):
        port = _free_port()
        env.update({"SMALLDP_APPVIEW_HOST": "127.0.0.1", "BSKY_PORT": str(port),
                    "BSKY_DATAPLANE_URLS": f"http://127.0.0.1:{grpc_port}",
                    "BSKY_DID_PLC_URL": f"http://127.0.0.1:{dead_port}",
                    "NODE_OPTIONS": f"--require {LOOPBACK_GUARD}", "PATH": "/usr/bin:/bin"})
        started = time.monotonic()
        proc = subprocess.Popen(
            [*ch.sudo, "chroot", "--userspec=61184:61184", str(ch.path), "/usr/bin/env", "-i",
             "-C", unit["WorkingDirectory"][-1], *(f"{k}={v}" for k, v in env.items()), *exec_start],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    status, health = _get_json(f"http://127.0.0.1:{port}/xrpc/_health")
                    if status == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the AppView did not answer 200:\n{proc.communicate(timeout=10)[0]}")
                time.sleep(0.2)
            _timing("the AppView answering /xrpc/_health in the chroot", time.monotonic() - started)
            assert "error" not in health, health  # {} (no BSKY_VERSION), 503 with an error when Ping fails
            status, body = _get_json(f"http://127.0.0.1:{port}/xrpc/app.bsky.actor.getProfile"
                                     "?actor=did:plc:aaaaaaaaaaaaaaaaaaaaaaaa")
            assert (status, body) == (400, {"error": "InvalidRequest", "message": "Profile not found"})
            assert proc.poll() is None  # stdin at /dev/null did not stop it
        finally:
            output = _stop(proc)
    assert proc.returncode == 0, output
    ready = output.splitlines()[0]
    assert f'"port":{port}' in ready and '"host":"127.0.0.1"' in ready, output
    assert "loopback_guard: blocked" not in output, output


def _timing(label: str, seconds: float) -> None:
    """Print a duration and keep it in ~/.cache/smalldp-ci/timings.txt (last run's figures)."""
    line = f"{label}: {seconds:.1f} s"
    print(line)
    with open(CACHE / "timings.txt", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def test_install_sh_in_a_bookworm_chroot(tmp_path_factory: pytest.TempPathFactory) -> None:
    sudo = _root_prefix()
    _tool("chroot")
    started = time.monotonic()
    base = _base_root(sudo)
    _timing("bookworm root ready (built or cached)", time.monotonic() - started)
    ch = Chroot(tmp_path_factory.mktemp("appliance") / "root", sudo)
    try:
        ch.setup(base)
        assert not ch.exists("/run/systemd/system")  # systemd does not run here

        # 1. A fresh install, as `sudo scripts/install.sh --appview` from the checkout:
        #    smalldp and the official AppView on it.
        started = time.monotonic()
        out = ch.sh("/src/scripts/install.sh --appview").stdout
        _timing("install.sh --appview, fresh install in the chroot", time.monotonic() - started)
        assert "not started (systemd is not running here" in out, out
        assert re.search(r"open http://\S+\.local:8080/", out), out
        assert re.search(r"open http://\S+\.local:2584/xrpc/_health", out), out
        assert "installing nodejs npm with apt-get" in out and "wrote /etc/smalldp/appview.env" in out, out
        passwd = ch.sh("getent passwd smalldp").stdout.strip().split(":")
        assert int(passwd[2]) < 1000 and passwd[5] == "/var/lib/smalldp" and passwd[6] == "/usr/sbin/nologin"
        assert ch.sh("readlink /etc/systemd/system/multi-user.target.wants/smalldp.service").stdout.strip() \
            == "/etc/systemd/system/smalldp.service"
        assert ch.sh("cat /etc/systemd/system/smalldp.service").stdout == UNIT.read_text()
        assert ch.sh("cat /etc/sysusers.d/smalldp.conf").stdout == (ROOT / "systemd/smalldp.sysusers").read_text()
        assert ch.sh("cat /etc/smalldp/smalldp.toml").stdout == EXAMPLE_CONFIG.read_text()
        assert ch.sh("stat -c '%U:%G %a' /etc/smalldp/smalldp.toml /var/lib/smalldp").stdout.split("\n")[:2] \
            == ["root:smalldp 640", "smalldp:smalldp 700"]
        assert ch.sh(f"{EXEC_START} --version").stdout.startswith("smalldp ")
        # The real ExecStart exists now: verify the installed unit against this root.
        analyze = _tool("systemd-analyze")
        verify = subprocess.run([*sudo, analyze, "verify", "--man=no", f"--root={ch.path}",
                                 "/etc/systemd/system/smalldp.service"], capture_output=True, text=True)
        assert verify.returncode == 0 and "smalldp" not in verify.stdout + verify.stderr, verify.stderr
        health = _serve_and_check_health(ch)
        assert health["version"] and "ingest" in health
        assert ch.exists("/var/lib/smalldp/smalldp.sqlite")
        # The AppView: files, settings, unit, enabled; then running on smalldp.
        assert ch.sh("cat /etc/systemd/system/smalldp-appview.service").stdout == APPVIEW_UNIT.read_text()
        assert ch.sh("readlink /etc/systemd/system/multi-user.target.wants/smalldp-appview.service").stdout.strip() \
            == "/etc/systemd/system/smalldp-appview.service"
        for f in ("package.json", "package-lock.json", "appview.cjs"):
            assert ch.sh(f"cat /opt/smalldp/appview/{f}").stdout == (ROOT / "conformance/node" / f).read_text(), f
        assert ch.sh("stat -c '%U:%G %a' /etc/smalldp/appview.env /opt/smalldp/appview/node_modules/@atproto/bsky"
                     ).stdout.split("\n")[:2] == ["root:root 600", "root:root 755"]
        assert ch.exists("/usr/bin/node", "-x") and ch.exists("/usr/bin/npm", "-x")
        appview_env = ch.sh("cat /etc/smalldp/appview.env").stdout
        settings = _parse_env_file(appview_env)
        host = ch.sh("hostname").stdout.strip().lower()
        assert settings["BSKY_SERVER_DID"] == f"did:web:{host}.local"
        assert settings["BSKY_DATAPLANE_URLS"] == "http://127.0.0.1:8081"  # smalldp.toml's grpc_listen
        assert re.fullmatch(r"[0-9a-f]{64}", settings["BSKY_SERVICE_SIGNING_KEY"])
        verify = subprocess.run([*sudo, analyze, "verify", "--man=no", f"--root={ch.path}",
                                 "/etc/systemd/system/smalldp-appview.service"], capture_output=True, text=True)
        assert verify.returncode == 0 and "smalldp" not in verify.stdout + verify.stderr, verify.stderr
        started = time.monotonic()
        _check_appview_on_smalldp(ch)
        _timing("the AppView on smalldp in the chroot (both started, checked, stopped)", time.monotonic() - started)

        # 2. Upgrade: run again; the operator's edited config is kept byte for byte.
        edited = EXAMPLE_CONFIG.read_text() + '\n# edited by the operator\nlog_level = "debug"\n'
        ch.sh(f"cat > /etc/smalldp/smalldp.toml <<'EOF'\n{edited}EOF")
        started = time.monotonic()
        out = ch.sh("/src/scripts/install.sh").stdout
        _timing("install.sh, upgrade run in the chroot", time.monotonic() - started)
        assert "kept /etc/smalldp/smalldp.toml" in out, out
        assert "created the system user" not in out and "installing python3" not in out, out
        assert ch.sh("cat /etc/smalldp/smalldp.toml").stdout == edited
        _serve_and_check_health(ch)
        # The AppView, installed before, is upgraded with it: same lockfile, no npm ci; its
        # settings (and key) kept.
        assert "upgrading the AppView too" in out and "kept /opt/smalldp/appview/node_modules" in out, out
        assert "kept /etc/smalldp/appview.env" in out and "installing nodejs" not in out, out
        assert ch.sh("cat /etc/smalldp/appview.env").stdout == appview_env

        # 3. --uninstall: smalldp and the AppView go, the data, the config (the AppView's
        #    settings too) and the user stay.
        out = ch.sh("/src/scripts/install.sh --uninstall").stdout
        assert "removed the AppView" in out and "kept its settings, /etc/smalldp/appview.env" in out, out
        for gone in ("/etc/systemd/system/smalldp.service", "/etc/sysusers.d/smalldp.conf",
                     "/opt/smalldp", "/etc/systemd/system/smalldp-appview.service"):
            assert not ch.exists(gone), gone
        for name in ("smalldp.service", "smalldp-appview.service"):
            assert not ch.exists(f"/etc/systemd/system/multi-user.target.wants/{name}", "-L"), name
        assert ch.sh("cat /etc/smalldp/appview.env").stdout == appview_env
        assert ch.exists("/var/lib/smalldp/smalldp.sqlite")
        assert ch.sh("cat /etc/smalldp/smalldp.toml").stdout == edited
        assert ch.sh("getent passwd smalldp", check=False).returncode == 0

        # 4. The image layer's bake script, run from the host on the root as an image
        #    build's customize hook would: source copied in, installed, enabled, not started.
        result = subprocess.run([*sudo, "env", "-i", *ch.env, str(BAKE), str(ch.path)],
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert ch.exists("/opt/smalldp/src/scripts/install.sh", "-x")
        assert not ch.exists("/opt/smalldp/src/.venv") and not ch.exists("/opt/smalldp/src/.git")
        assert ch.exists("/etc/systemd/system/multi-user.target.wants/smalldp.service", "-L")
        assert ch.sh("cat /etc/smalldp/smalldp.toml").stdout == edited  # present, so kept
        _serve_and_check_health(ch)
        assert not ch.exists("/etc/systemd/system/smalldp-appview.service")  # not asked for

        # 4b. `--appview --uninstall` removes the AppView alone (its unit, enablement and
        #     directory, put in place by hand here), and keeps its settings.
        ch.sh("install -m 0644 /src/systemd/smalldp-appview.service /etc/systemd/system/\n"
              "ln -s /etc/systemd/system/smalldp-appview.service /etc/systemd/system/multi-user.target.wants/\n"
              "mkdir -p /opt/smalldp/appview/node_modules")
        out = ch.sh("/src/scripts/install.sh --appview --uninstall").stdout
        assert "removed the AppView" in out and "removing smalldp" not in out, out
        for gone in ("/etc/systemd/system/smalldp-appview.service", "/opt/smalldp/appview"):
            assert not ch.exists(gone), gone
        assert not ch.exists("/etc/systemd/system/multi-user.target.wants/smalldp-appview.service", "-L")
        assert ch.exists("/etc/systemd/system/multi-user.target.wants/smalldp.service", "-L")
        assert ch.exists(EXEC_START, "-x") and ch.exists("/opt/smalldp/src/scripts/install.sh", "-x")
        assert ch.sh("cat /etc/smalldp/appview.env").stdout == appview_env

        # 5. The cloud-init first-boot script from user-data with a smalldp.tar.gz on the
        #    boot partition, after cloud-init's write_files put the user's config in place.
        archive = tmp_path_factory.mktemp("boot") / "smalldp.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for name in ("pyproject.toml", "README.md", "src", "scripts", "systemd", "appliance"):
                tar.add(ROOT / name, arcname=f"smalldp/{name}",
                        filter=lambda t: None if "__pycache__" in t.name else t)
        ch.run_host(["mkdir", "-p", str(ch.path / "boot/firmware")])
        ch.run_host(["cp", str(archive), str(ch.path / "boot/firmware/smalldp.tar.gz")])
        user_toml = _user_data_file("/etc/smalldp/smalldp.toml")
        firstboot = _user_data_file("/usr/local/sbin/smalldp-firstboot")
        ch.sh(f"cat > /etc/smalldp/smalldp.toml <<'EOF'\n{user_toml}EOF\n"
              f"cat > /usr/local/sbin/smalldp-firstboot <<'EOF'\n{firstboot}EOF\n"
              "chmod 0755 /usr/local/sbin/smalldp-firstboot")
        started = time.monotonic()
        out = ch.sh("/usr/local/sbin/smalldp-firstboot").stdout
        _timing("cloud-init first-boot script (reinstall) in the chroot", time.monotonic() - started)
        assert "kept /etc/smalldp/smalldp.toml" in out, out
        assert ch.exists("/var/log/smalldp-firstboot.log")
        assert ch.sh("cat /etc/smalldp/smalldp.toml").stdout == user_toml
        _serve_and_check_health(ch)

        # 6. --purge: nothing of smalldp is left.
        ch.sh("/src/scripts/install.sh --purge")
        for gone in ("/opt/smalldp", "/var/lib/smalldp", "/etc/smalldp", "/etc/systemd/system/smalldp.service",
                     "/etc/systemd/system/smalldp-appview.service"):
            assert not ch.exists(gone), gone
        assert ch.sh("getent passwd smalldp", check=False).returncode != 0
        assert ch.sh("getent group smalldp", check=False).returncode != 0
    finally:
        ch.close()
