"""Operating a mount: ``walrusfs status``, the Prometheus endpoint and textfile, and the systemd
notification protocol of a ``walrusfs mount --foreground`` run as a Type=notify service."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from fs_harness import WALRUSFS, force_unmount, is_mounted, mounted, run, status, stop_pid, wait_gone

from walrusfs.fs import status as status_module
from walrusfs.fs.encryption import OVERHEAD
from walrusfs.fs.metrics import render_metrics, serve_metrics, write_textfile
from walrusfs.fs.notify import sd_notify
from walrusfs.fs.status import format_bytes, format_status

MiB = 1 << 20
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "walrusfs-mount@.service"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """'name{labels}' -> value, checking the exposition format on the way: every sample belongs to
    a family announced by HELP and TYPE lines."""
    families: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter"), line
            families[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert name in families, f"{name} has no TYPE line"
        assert families[name] != "counter" or name.endswith("_total"), name
        samples[name + (labels or "")] = float(value)
    assert text.endswith("\n")
    return samples


def http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def scrape(port: int) -> dict[str, float]:
    code, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert code == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    return parse_metrics(body.decode())


def walrusfs_status(fs, directory: Path, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([WALRUSFS, "status", str(directory), *flags], fs.env, timeout=30, check=check)


def metrics_port(fs, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", fs.log_tail(100_000))
        if found:
            return int(found[-1])
        time.sleep(0.1)
    raise AssertionError(f"the daemon never said where its metrics are\n{fs.log_tail()}")


def test_status_and_metrics_of_a_real_mount(shared_network, make_fs, tmp_path: Path) -> None:
    fs = make_fs(shared_network)
    # Uploads wait for fsync (no background upload after 2 s), so the staged figure is exact.
    settings = fs.state / "fs.toml"
    settings.write_text(re.sub(r"upload_delay = \S+", "upload_delay = 600.0", settings.read_text()))
    textfile = tmp_path / "textfile" / "walrusfs.prom"
    textfile.parent.mkdir()
    with mounted(fs, tmp_path / "mnt", "-o", f"metrics=127.0.0.1:0,metrics_textfile={textfile}") as mp:
        port = metrics_port(fs)
        data = os.urandom(3 * MiB + 12345)
        (mp / "sub").mkdir()
        (mp / "sub" / "f").write_bytes(data)

        # Staged, not yet certified: JSON and the human form agree with the daemon. Staged bytes are
        # what the blocks occupy on disk: sealed (the filesystem is encrypted), each a few bytes more.
        staged = len(data) + 4 * OVERHEAD  # four blocks of 1 MiB at most
        before = json.loads(walrusfs_status(fs, mp, "--json").stdout)
        assert before["staged_bytes"] == staged
        assert before["dirty_bytes"] == 0
        assert before["uploaded_bytes"] == 0
        assert before["mountpoint"] == str(mp)
        assert before["uploads_failing"] is False
        assert before["pid"] == status(mp)["pid"]
        human = walrusfs_status(fs, mp / "sub").stdout  # any directory inside the mount will do
        assert re.search(rf"^  staged +{re.escape(format_bytes(staged))}  on local disk", human, re.M), human
        assert f"mounted on {mp}" in human and "UPLOADS FAILING" not in human
        metrics = scrape(port)
        assert metrics["walrusfs_mount_staged_bytes"] == staged
        assert metrics["walrusfs_mount_uploaded_bytes_total"] == 0
        assert metrics["walrusfs_mount_uploads_failing"] == 0
        assert metrics[f'walrusfs_mount_info{{fs_id="{before["fs_id"]}",state="{fs.state}"}}'] == 1

        with open(mp / "sub" / "f", "rb+") as handle:
            os.fsync(handle.fileno())  # returns once the file's blocks are certified

        after = json.loads(walrusfs_status(fs, mp, "--json").stdout)
        assert after["staged_bytes"] == 0
        assert after["uploaded_bytes"] >= len(data) and after["uploaded_blobs"] >= 1
        human = walrusfs_status(fs, mp).stdout
        assert re.search(r"^  staged +0 B  on local disk", human, re.M), human
        assert "uploads  (all certified)" in human
        assert "nodes: 7 of 7 healthy" in human, human
        assert re.search(r"^last snapshot +\S", human, re.M), human
        metrics = scrape(port)
        assert metrics["walrusfs_mount_staged_bytes"] == 0
        assert metrics["walrusfs_mount_uploaded_bytes_total"] == after["uploaded_bytes"]
        assert metrics["walrusfs_mount_uploaded_blobs_total"] >= 1
        nodes = {key for key in metrics if key.startswith("walrusfs_mount_node_successes_total{")}
        assert len(nodes) == 7 and all(metrics[key] >= 1 for key in nodes)

        # Whatever else arrives on the port is answered, and does not stop the next scrape.
        assert http(port, b"GET /other HTTP/1.1\r\n\r\n")[0] == 404
        assert http(port, b"POST /metrics HTTP/1.1\r\n\r\n")[0] == 405
        assert http(port, b"\x00\xff garbage\r\n\r\n")[0] == 400
        assert http(port, b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 2000)[0] == 400
        code, headers, body = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert code == 200 and body == b"" and int(headers["Content-Length"]) > 0
        with socket.create_connection(("127.0.0.1", port)) as silent:  # a client that never sends
            silent.sendall(b"GET /met")
            started = time.monotonic()
            assert scrape(port)["walrusfs_mount_staged_bytes"] == 0
            assert time.monotonic() - started < 2

        # The textfile: written at once (then every 15 s), in the same format, world-readable.
        deadline = time.monotonic() + 10
        while not textfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "walrusfs_mount_staged_bytes" in parse_metrics(textfile.read_text())
        assert textfile.stat().st_mode & 0o777 == 0o644
        assert [path.name for path in textfile.parent.iterdir()] == ["walrusfs.prom"]
    # The daemon is gone: its figures must not look current.
    assert not textfile.exists()


def test_status_of_something_that_is_not_a_walrusfs_mount(tmp_path: Path) -> None:
    env = dict(os.environ, WALRUSFS_HOME=str(tmp_path / "home"))
    result = run([WALRUSFS, "status", str(tmp_path)], env, check=False)
    assert result.returncode == 1
    assert f"{tmp_path} is not a walrusfs mount" in result.stderr
    assert result.stdout == ""
    missing = run([WALRUSFS, "status", "--json", str(tmp_path / "nothing")], env, check=False)
    # Not an answer about the mount that holds its parent (often /): the path is not there at all.
    assert missing.returncode == 1 and f"{tmp_path / 'nothing'} does not exist" in missing.stderr
    assert "it is on /" not in missing.stderr


def test_status_exits_2_and_says_why_when_uploads_fail(monkeypatch, capsys) -> None:
    """Exit 2 and the error up front when staged data is not getting certified (forcing a real
    failure costs the 30 s store deadline; the status dict below is what such a daemon reports)."""
    now = time.time()
    failing = {
        "pid": 1, "fs_id": "ab" * 16, "state": "/state", "mounted_since": now - 400, "staged_bytes": 5 * MiB,
        "dirty_bytes": 0, "uploads_in_flight": 0, "uploaded_blobs": 2, "uploaded_bytes": 40 * MiB,
        "upload_failures": 3, "last_error": "blob NOT stored: only 4 of 7 shards\nconfirmed",
        "cache_bytes": 0, "cache_hits": 0, "cache_misses": 0,
        "nodes": {"node-1": {"latency_ms": None, "failure_score": 3.0, "failures": 6, "successes": 0, "lies": 0,
                             "last_error": "connection refused"}},
    }
    monkeypatch.setattr(status_module, "find_mount_root", lambda directory: Path("/mnt/x"))
    monkeypatch.setattr(status_module, "read_status_within", lambda mountpoint, timeout: dict(failing))
    from walrusfs.cli import main

    assert main(["status", "/mnt/x"]) == 2
    out = capsys.readouterr().out
    assert "!! UPLOADS FAILING (3 failed attempts since mount)" in out
    assert "!! last error: blob NOT stored: only 4 of 7 shards confirmed" in out
    assert re.search(r"node-1 +failing +- +3\.00 +0 +6 +0 +connection refused", out), out
    assert main(["status", "--json", "/mnt/x"]) == 2
    assert json.loads(capsys.readouterr().out)["uploads_failing"] is True
    assert parse_metrics(render_metrics(failing))["walrusfs_mount_uploads_failing"] == 1

    # A failure long recovered from (the last upload succeeded after it) is history, not an alarm.
    recovered = dict(failing, last_error_at=now - 300, last_upload_at=now - 10)
    assert not status_module.uploads_failing(recovered)
    assert "(5 min ago; since recovered)" in format_status(recovered, now)
    # A metadata snapshot that fails is as bad, and an older daemon without snapshots is fine.
    snapshot = {"seq": 4, "created_ns": int((now - 180) * 1e9), "manifest": None, "db_bytes": 3 * MiB,
                "uploaded_bytes": 3 * MiB, "last_error": "no quorum", "next_due_s": 30.0}
    text = format_status(dict(recovered, snapshot=snapshot, read_only=True), now)
    assert "!! METADATA SNAPSHOTS FAILING: no quorum" in text
    assert "#4, 3 min ago, database 3.0 MiB (3.0 MiB uploaded); next due in 30 s" in text
    assert "(read-only)" in text
    assert "does not report metadata snapshots" in format_status(recovered, now)
    samples = parse_metrics(render_metrics(dict(recovered, snapshot=snapshot)))
    assert samples["walrusfs_mount_snapshot_failing"] == 1
    assert samples["walrusfs_mount_snapshot_last_timestamp_seconds"] == pytest.approx(now - 180)
    assert samples['walrusfs_mount_node_failure_score{node="node-1"}'] == 3


def test_metrics_server_port_zero_and_textfile_rewrites(tmp_path: Path) -> None:
    figures = {"staged_bytes": 0, "nodes": {'we"ird\\node': {"failures": 1}}}
    textfile = tmp_path / "m.prom"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, "127.0.0.1:0", lambda: figures)
            assert port > 0
            nursery.start_soon(write_textfile, textfile, lambda: figures, 0.05)
            for value in (1, 2):
                figures["staged_bytes"] = value
                samples = await trio.to_thread.run_sync(scrape, port)
                assert samples["walrusfs_mount_staged_bytes"] == value
                assert samples['walrusfs_mount_node_failures_total{node="we\\"ird\\\\node"}'] == 1
                with trio.fail_after(5):
                    while not textfile.exists() or parse_metrics(textfile.read_text()).get(
                            "walrusfs_mount_staged_bytes") != value:
                        await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert not textfile.exists()


def test_sd_notify_path_abstract_and_unset(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    name = f"walrusfs-test-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1\nSTATUS=hello") is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=hello"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify("READY=1") is False  # best effort: no exception


@contextlib.contextmanager
def notified_process(fs, command: list[str], mp: Path, tmp_path: Path
                     ) -> Iterator[tuple[socket.socket, subprocess.Popen]]:
    """``command`` (a foreground mount on ``mp``) run with NOTIFY_SOCKET bound to a real datagram
    socket, as systemd runs a Type=notify service; ended by its pid whatever happens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver, \
            open(tmp_path / "mount.log", "wb") as log:
        receiver.bind(str(tmp_path / "notify"))
        receiver.settimeout(30)
        process = subprocess.Popen(command, env=dict(fs.env, NOTIFY_SOCKET=str(tmp_path / "notify")),
                                   stdout=log, stderr=log)
        fs.mounts[mp] = process.pid  # so the fixture ends it even if the with block cannot
        try:
            yield receiver, process
        finally:
            if process.poll() is None:
                force_unmount(mp)
                stop_pid(process.pid)
                process.wait(timeout=30)
            fs.mounts.pop(mp, None)
    logged = (tmp_path / "mount.log").read_text()
    assert "could not notify" not in logged, logged


def test_foreground_mount_notifies_ready_then_stopping(shared_network, make_fs, tmp_path: Path) -> None:
    """What systemd sees of ``Type=notify``: READY=1 once the mount answers, STOPPING=1 when it goes."""
    fs = make_fs(shared_network)
    mp = (tmp_path / "mnt").resolve()
    mp.mkdir()
    with notified_process(fs, [WALRUSFS, "mount", fs.name, str(mp), "--foreground"], mp, tmp_path) as (
            receiver, process):
        ready = receiver.recv(4096).decode()
        assert ready.startswith("READY=1\n"), ready
        assert f"STATUS=mounted on {mp}: 0 B staged" in ready
        assert is_mounted(mp)  # ready means mounted: a request now gets an answer
        assert status(mp)["pid"] == process.pid  # sent by the main process (NotifyAccess=main)
        (mp / "f").write_bytes(b"x" * 1000)
        os.kill(process.pid, signal.SIGTERM)  # what systemd does once ExecStop has finished
        stopping = receiver.recv(4096).decode()
        assert stopping.startswith("STOPPING=1\n"), stopping
        assert process.wait(timeout=60) == 0
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], check=True, timeout=30)
    assert wait_gone(process.pid, 5)
    with fs.db() as db:  # the daemon uploaded what was staged before it exited
        assert db.execute("SELECT COUNT(*) FROM blocks WHERE blob IS NULL").fetchone()[0] == 0


def unit_command(key: str, instance: str, environment: dict[str, str]) -> list[str]:
    """The unit's Exec line ``key`` as systemd would run it: %i and ${VAR} substituted, the
    installed /opt/walrusfs/.venv replaced by this checkout's."""
    for line in UNIT.read_text().splitlines():
        if line.startswith(key + "="):
            command = line.split("=", 1)[1].lstrip("-").replace("%i", instance)
            command = re.sub(r"\$\{(\w+)\}", lambda match: environment[match.group(1)], command)
            return [WALRUSFS if word.endswith("/.venv/bin/walrusfs") else word for word in shlex.split(command)]
    raise AssertionError(f"no {key}= in {UNIT}")


def unit_environment(instance: str) -> dict[str, str]:
    line = next(line for line in UNIT.read_text().splitlines() if line.startswith("Environment="))
    return dict(word.split("=", 1) for word in shlex.split(line.split("=", 1)[1].replace("%i", instance)))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_mount_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's.
    text = UNIT.read_text().replace("/opt/walrusfs/.venv/bin/walrusfs", WALRUSFS)
    (tmp_path / UNIT.name).write_text(text)
    shutil.copy(UNIT.with_name("walrusfs-nodes.target"), tmp_path)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "walrusfs-mount@archive.service")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "Type=notify" in text and "NotifyAccess=main" in text and "TimeoutStopSec=infinity" in text


def test_the_units_start_and_stop_commands(shared_network, make_fs, tmp_path: Path) -> None:
    """What ``systemctl start`` and ``stop`` of walrusfs-mount@NAME run, with a real NOTIFY_SOCKET:
    READY=1 once mounted; ExecStop (walrusfs umount) returns only once the data written is
    certified, the daemon says STOPPING=1 and exits 0."""
    fs = make_fs(shared_network, name="unitfs")
    mp = (tmp_path / "mnt" / "unitfs").resolve()
    environment = dict(unit_environment(fs.name), MOUNTPOINT=str(mp), OPTIONS="defaults,metrics=127.0.0.1:0")
    assert unit_environment(fs.name)["MOUNTPOINT"] == "/mnt/unitfs"
    run(unit_command("ExecStartPre", fs.name, environment), fs.env)  # mkdir -p the mount point
    with notified_process(fs, unit_command("ExecStart", fs.name, environment), mp, tmp_path) as (receiver, process):
        assert receiver.recv(4096).startswith(b"READY=1\n")
        (mp / "f").write_bytes(os.urandom(2 * MiB))
        stop = run(unit_command("ExecStop", fs.name, environment), fs.env, timeout=120)
        assert "every byte is certified" in stop.stderr
        assert receiver.recv(4096).startswith(b"STOPPING=1\n")
        assert process.wait(timeout=60) == 0
        assert not is_mounted(mp)
    with fs.db() as db:
        assert db.execute("SELECT COUNT(*) FROM blocks WHERE blob IS NULL").fetchone()[0] == 0
    # ExecStopPost after a clean stop: nothing to detach, and its failure is ignored ("-" prefix).
    post = subprocess.run(unit_command("ExecStopPost", fs.name, environment), capture_output=True, timeout=30)
    assert post.returncode != 0 and not is_mounted(mp)
