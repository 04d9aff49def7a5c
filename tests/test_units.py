"""The shipped systemd units, judged by systemd's own tools and against what dlrd does.

`systemd-analyze verify` checks a unit in the context of a whole system:
every unit it pulls in (sysinit.target, sockets.target, ...) and every
binary its Exec lines name must exist. The tests give it a scratch root
holding a copy of this host's own units, an executable at each absolute
path the Exec lines name, and the shipped files where an operator installs
them, so an empty stderr means the units are clean, not that the host
happens to have dlrd installed.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from systemd_root import stub_executable, with_host_units
from wire import post, receipt_body, soap_report, wait_for

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "systemd"
PLAIN = SYSTEMD / "dlrd.service"
SOCKET_ACTIVATED = SYSTEMD / "socket-activated" / "dlrd.service"
HTTPS_SOCKET = SYSTEMD / "dlrd.socket"
HTTP_SOCKET = SYSTEMD / "dlrd-http.socket"
NOTIFY_RELOAD = SYSTEMD / "notify-reload.conf"
ONE_FILE = SYSTEMD / "one-file-binary.conf"
EXEC_START = "/usr/local/bin/dlrd --config /etc/dlrd/dlrd.ini serve"

# The settings on which the socket-activated variant may differ from the plain unit,
# and why: systemd binds the sockets, so dlrd needs neither a capability nor a network.
NETWORK_SETTINGS = {
    ("Unit", "Wants"), ("Unit", "After"), ("Unit", "Requires"),
    ("Service", "AmbientCapabilities"), ("Service", "CapabilityBoundingSet"),
    ("Service", "PrivateUsers"), ("Service", "PrivateNetwork"), ("Service", "IPAddressDeny"),
    ("Service", "RestrictAddressFamilies"), ("Install", "Also"),
}

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed here")


def parse_unit(path: Path) -> dict[tuple[str, str], list[str]]:
    """A unit file as (section, key) -> values in order, the way systemd reads repeated keys."""
    settings: dict[tuple[str, str], list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault((section, key.strip()), []).append(value.strip())
    return settings


def systemd_version() -> int:
    """The major version `systemd-analyze --version` reports (252 on Debian 12)."""
    first = subprocess.run([analyze, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.match(r"systemd (\d+)", first).group(1))


def scratch_root(tmp_path: Path, units: dict[str, Path]) -> Path:
    """A root holding this host's units, stubs for the Exec binaries, and `units` under /etc/systemd/system."""
    root = with_host_units(tmp_path / "root")
    for name, source in units.items():
        target = root / "etc/systemd/system" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        for (_, key), values in parse_unit(source).items():
            for value in values:
                binary = value.lstrip("-@:+!").split(" ", 1)[0]
                if key.startswith("Exec") and binary.startswith("/"):
                    stub_executable(root, binary)
    return root


def verify(root: Path, *names: str) -> subprocess.CompletedProcess[str]:
    # --man=no: Documentation=man:dlrd(8) is installed by the .deb and the pip route, not on this host;
    # tests/test_manpage.py checks the page itself, tests/test_deb.py that the package installs it.
    return subprocess.run([analyze, "verify", "--man=no", f"--root={root}", *names],
                          capture_output=True, text=True, timeout=60)


@needs_analyze
def test_plain_unit_verifies_clean(tmp_path):
    root = scratch_root(tmp_path, {"dlrd.service": PLAIN})
    result = verify(root, "dlrd.service")
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_socket_activated_unit_and_its_sockets_verify_clean(tmp_path):
    root = scratch_root(tmp_path, {"dlrd.service": SOCKET_ACTIVATED, "dlrd.socket": HTTPS_SOCKET,
                                   "dlrd-http.socket": HTTP_SOCKET})
    result = verify(root, "dlrd.service", "dlrd.socket", "dlrd-http.socket")
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_a_unit_that_is_not_clean_is_caught(tmp_path):
    """The scratch root must not hide faults: a misspelt setting shows up on stderr."""
    broken = tmp_path / "broken.service"
    broken.write_text(PLAIN.read_text().replace("ProtectHome=yes", "ProtectHomes=yes"))
    root = scratch_root(tmp_path, {"dlrd.service": broken})
    assert "Unknown key 'ProtectHomes'" in verify(root, "dlrd.service").stderr


@needs_analyze
@pytest.mark.parametrize(("unit", "most"), [(PLAIN, 1.5), (SOCKET_ACTIVATED, 1.0)],
                         ids=["dlrd.service", "socket-activated"])
def test_security_exposure_is_within_the_target(unit, most):
    result = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.stderr == ""
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout).group(1))
    exposures = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert score <= most, "\n".join(exposures)


def test_socket_names_say_which_sockets_are_tls():
    """dlrd serves TLS on a socket whose LISTEN_FDNAMES name starts with https or tls, plain HTTP otherwise."""
    https, http = parse_unit(HTTPS_SOCKET), parse_unit(HTTP_SOCKET)
    assert https["Socket", "FileDescriptorName"] == ["https"]
    assert https["Socket", "ListenStream"] == ["443"]
    assert http["Socket", "FileDescriptorName"] == ["http"]
    assert not http["Socket", "FileDescriptorName"][0].startswith(("https", "tls"))
    # Both hand their sockets to the one service the operator installed as dlrd.service.
    assert https["Socket", "Service"] == http["Socket", "Service"] == ["dlrd.service"]
    assert ("Socket", "Accept") not in https and ("Socket", "Accept") not in http


def test_socket_activated_unit_needs_its_socket_and_no_privilege():
    variant = parse_unit(SOCKET_ACTIVATED)
    assert variant["Unit", "Requires"] == variant["Unit", "After"] == ["dlrd.socket"]
    assert variant["Service", "CapabilityBoundingSet"] == [""]
    assert ("Service", "AmbientCapabilities") not in variant
    assert variant["Service", "RestrictAddressFamilies"] == ["AF_UNIX"]
    assert variant["Service", "PrivateNetwork"] == variant["Service", "PrivateUsers"] == ["yes"]
    assert variant["Service", "IPAddressDeny"] == ["any"]
    assert variant["Install", "Also"] == ["dlrd.socket"]


def test_both_units_agree_on_everything_but_the_network():
    plain, variant = parse_unit(PLAIN), parse_unit(SOCKET_ACTIVATED)
    differing = {key for key in plain.keys() | variant.keys() if plain.get(key) != variant.get(key)}
    assert differing == NETWORK_SETTINGS
    assert plain["Service", "ExecStart"] == [EXEC_START]
    for key in ("Type", "User", "Group", "WatchdogSec", "Restart", "StateDirectory", "LogsDirectory",
                "ConfigurationDirectory", "MemoryDenyWriteExecute", "PrivateMounts"):
        assert plain["Service", key] == variant["Service", key], key
    assert plain["Service", "Type"] == ["notify"]
    assert plain["Service", "WatchdogSec"] == ["30"]
    assert plain["Service", "Restart"] == ["on-failure"]


def test_notify_reload_drop_in_leaves_the_signal_to_systemd():
    """systemd sends ReloadSignal itself under notify-reload and would run ExecReload= too: two reloads."""
    drop_in = parse_unit(NOTIFY_RELOAD)
    assert set(drop_in) == {("Service", "Type"), ("Service", "ReloadSignal"), ("Service", "ExecReload")}
    assert drop_in["Service", "Type"] == ["notify-reload"]
    assert drop_in["Service", "ReloadSignal"] == ["SIGHUP"]
    assert drop_in["Service", "ExecReload"] == [""]


def test_dlrd_sends_what_notify_reload_waits_for(tmp_path):
    """Type=notify-reload waits for RELOADING=1 with MONOTONIC_USEC, then READY=1; dlrd sends both."""
    from dlrd.systemd import Notifier

    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        listener.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": address})
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        notifier.ready("reloaded")
        reloading, ready = listener.recv(4096).decode(), listener.recv(4096).decode()
    fields = dict(line.split("=", 1) for line in reloading.splitlines())
    assert fields["RELOADING"] == "1"
    assert int(fields["MONOTONIC_USEC"]) >= before
    assert "READY=1" in ready.splitlines()


@needs_analyze
def test_notify_reload_drop_in_verifies_on_systemd_253_and_later(tmp_path):
    if systemd_version() < 253:
        pytest.skip(f"Type=notify-reload needs systemd 253; this host has {systemd_version()}")
    root = scratch_root(tmp_path, {"dlrd.service": PLAIN,
                                   "dlrd.service.d/notify-reload.conf": NOTIFY_RELOAD})
    result = verify(root, "dlrd.service")
    assert (result.returncode, result.stderr) == (0, "")


MDWE_WRAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
# PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN: what MemoryDenyWriteExecute=yes asks of the kernel.
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def kernel_refuses_write_execute() -> bool:
    """True when this kernel has PR_SET_MDWE (Linux 6.3), checked in a child so this process stays free."""
    probe = ("import ctypes, mmap, sys\n"
             "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0): sys.exit(2)\n"
             "try: mmap.mmap(-1, 4096, prot=7)\n"
             "except OSError: sys.exit(0)\n"
             "sys.exit(1)\n")
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


def test_dlrd_runs_under_memory_deny_write_execute(daemon_factory, tmp_path):
    """MemoryDenyWriteExecute=yes must not break dlrd: serve, store, reload and stop without W+X memory."""
    if not kernel_refuses_write_execute():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3) to stand in for MemoryDenyWriteExecute=")
    wrapper = tmp_path / "mdwe.py"
    wrapper.write_text(MDWE_WRAPPER)
    daemon = daemon_factory(wrap=[sys.executable, str(wrapper)])
    assert soap_report(post(daemon.address, receipt_body("MDWE0001"))) == 0
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP" in daemon.log(since_start=True), 10, "the SIGHUP log line")
    assert soap_report(post(daemon.address, receipt_body("MDWE0002"))) == 0
    assert daemon.stop() == 0
    assert [row["message_id"] for row in daemon.rows("SELECT message_id FROM receipts ORDER BY id")] == [
        "MDWE0001", "MDWE0002"]


@needs_analyze
@pytest.mark.parametrize("unit", [PLAIN, SOCKET_ACTIVATED], ids=["dlrd.service", "socket-activated"])
def test_one_file_binary_drop_in_verifies_on_either_unit(tmp_path, unit):
    units = {"dlrd.service": unit, "dlrd.service.d/one-file-binary.conf": ONE_FILE}
    if unit == SOCKET_ACTIVATED:
        units |= {"dlrd.socket": HTTPS_SOCKET, "dlrd-http.socket": HTTP_SOCKET}
    result = verify(scratch_root(tmp_path, units), "dlrd.service")
    assert (result.returncode, result.stderr) == (0, "")


def test_one_file_binary_drop_in_hears_the_child_and_unpacks_where_it_may_execute():
    """The bootloader is the main PID and dlrd its child (tests/test_binary.py shows both)."""
    drop_in = parse_unit(ONE_FILE)
    assert drop_in["Service", "NotifyAccess"] == ["all"]
    assert drop_in["Service", "KillMode"] == ["mixed"]
    [tmpdir] = [value.removeprefix("TMPDIR=") for value in drop_in["Service", "Environment"]]
    assert tmpdir == "/var/cache/" + drop_in["Service", "CacheDirectory"][0]
    # Where the units make the file system read-only, only their own directories stay writable.
    assert all(parse_unit(unit)["Service", "ProtectSystem"] == ["strict"] for unit in (PLAIN, SOCKET_ACTIVATED))
    assert drop_in["Service", "ExecStartPre"] == [f"/bin/sh -c 'exec rm -rf {tmpdir}/_MEI*'"]
    # Nothing the two processes do not need: the base units keep NotifyAccess=main for one-process installs.
    assert set(drop_in) == {("Service", key) for key in ("NotifyAccess", "KillMode", "CacheDirectory",
                                                         "CacheDirectoryMode", "Environment", "ExecStartPre")}
    assert ("Service", "NotifyAccess") not in parse_unit(PLAIN)
