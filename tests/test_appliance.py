"""The appliance: the systemd unit, scripts/install.sh, cloud-init files, the image layer.

* The unit passes `systemd-analyze verify` with nothing on stderr and rates <= 2.0 in
  `systemd-analyze security --offline=true`.
* appliance/user-data is valid for Debian's `cloud-init schema`; network-config converts.
* scripts/install.sh runs for real inside a Debian Bookworm root (mmdebstrap, cached under
  ~/.cache/smalldp-ci/) in a chroot where systemd does not run: files, user, enablement
  symlink, and the installed smalldp answering /xrpc/_health on 127.0.0.1; then an upgrade
  that keeps an edited config, --uninstall (data kept), the image bake script, the
  cloud-init first-boot script, and --purge.

Debian packages come from scripts/_system_deps.sh. A test skips only when a prerequisite
truly cannot be had (no root nor sudo, a tool apt could not install), with a warning
that says which, so the skip shows in the run's summary.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from smalldp.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "smalldp.service"
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


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


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


def test_unit_verifies_without_warnings(tmp_path: Path) -> None:
    """`systemd-analyze verify` exits 0 and says nothing about the unit.

    It checks that ExecStart exists: the copy verified here points it at a stand-in
    executable (the chroot test verifies the real path in an installed root).
    """
    analyze = _tool("systemd-analyze")
    stand_in = tmp_path / "smalldp"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "smalldp.service"
    text = UNIT.read_text()
    assert text.count(EXEC_START) == 1
    unit.write_text(text.replace(EXEC_START, str(stand_in)))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=120)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "smalldp" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_unit_security_exposure_at_most_2() -> None:
    analyze = _tool("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for smalldp\.service:\s*([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security: {score}")
    assert score <= SECURITY_MAX, result.stdout


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
        for cache, inside in (("pip", "root/.cache/pip"), ("apt-archives", "var/cache/apt/archives")):
            (CACHE / cache).mkdir(parents=True, exist_ok=True)
            self.mount(["--bind", str(CACHE / cache)], inside)
        # Trust what the host trusts (a CI network may re-sign TLS with its own CA);
        # pip reads it through PIP_CERT, leaving the root's own CA store as Debian made it.
        host_ca = Path(os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt")
        self.env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive"]
        if host_ca.is_file():
            self.run_host(["cp", str(host_ca), str(path / "root/host-ca.pem")])
            self.env.append("PIP_CERT=/root/host-ca.pem")
        for name in ("PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
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


def _serve_and_check_health(ch: Chroot) -> dict:
    """Start the installed smalldp in the chroot as user smalldp, as the unit would (config,
    STATE_DIRECTORY), on 127.0.0.1 with Jetstream pointed at a closed local port; read
    /xrpc/_health; stop it with SIGTERM."""
    import json
    port, dead_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        [*ch.sudo, "chroot", "--userspec=smalldp:smalldp", str(ch.path), "/usr/bin/env", "-i",
         "PATH=/usr/bin:/bin", "HOME=/var/lib/smalldp", "STATE_DIRECTORY=/var/lib/smalldp",
         EXEC_START, "serve", "--config", "/etc/smalldp/smalldp.toml",
         "--listen", f"127.0.0.1:{port}", "--grpc-listen", f"127.0.0.1:{_free_port()}",
         "--jetstream", f"ws://127.0.0.1:{dead_port}/subscribe",
         "--no-compress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/xrpc/_health", timeout=5) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"smalldp did not answer:\n{proc.communicate(timeout=10)[0]}")
                time.sleep(0.2)
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
    assert proc.returncode == 0, output
    assert health["status"] == "ok", health
    return health


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

        # 1. A fresh install, as `sudo scripts/install.sh` from the checkout.
        started = time.monotonic()
        out = ch.sh("/src/scripts/install.sh").stdout
        _timing("install.sh, fresh install in the chroot", time.monotonic() - started)
        assert "not started (systemd is not running here" in out, out
        assert re.search(r"open http://\S+\.local:8080/", out), out
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

        # 3. --uninstall: smalldp goes, the data, the config and the user stay.
        ch.sh("/src/scripts/install.sh --uninstall")
        for gone in ("/etc/systemd/system/smalldp.service", "/etc/sysusers.d/smalldp.conf",
                     "/opt/smalldp"):
            assert not ch.exists(gone), gone
        assert not ch.exists("/etc/systemd/system/multi-user.target.wants/smalldp.service", "-L")
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
        for gone in ("/opt/smalldp", "/var/lib/smalldp", "/etc/smalldp", "/etc/systemd/system/smalldp.service"):
            assert not ch.exists(gone), gone
        assert ch.sh("getent passwd smalldp", check=False).returncode != 0
        assert ch.sh("getent group smalldp", check=False).returncode != 0
    finally:
        ch.close()
