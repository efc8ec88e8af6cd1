"""``walrusfs bench gluster``: walrusfs and a GlusterFS dispersed volume side by side.

Run small where GlusterFS is installed, so that the command cannot rot; everywhere, it refuses
clearly and starts nothing when GlusterFS is missing or its port is taken."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from fs_harness import WALRUSFS

from walrusfs.bench.gluster import GLUSTER_HOST, GLUSTERD_PORT, glusterd_volfile


def bench(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    return subprocess.run([WALRUSFS, "bench", "gluster", *args], capture_output=True, text=True, timeout=900, env=env)


def test_without_glusterfs_it_says_how_to_install_it_and_starts_nothing(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("dd", "umount"):  # a PATH with everything but GlusterFS
        (tools / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    result = bench("--size-mib", "1", path=str(tools))
    assert result.returncode == 2
    assert "glusterd, gluster, glusterfs not found" in result.stderr
    assert "apt-get install glusterfs-server" in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(shutil.which("glusterd") is None, reason="GlusterFS is not installed (glusterfs-server)")
def test_refuses_when_the_glusterd_port_is_taken() -> None:
    with socket.socket() as holder:
        try:
            holder.bind((GLUSTER_HOST, GLUSTERD_PORT))
        except OSError:
            pytest.skip(f"{GLUSTER_HOST}:{GLUSTERD_PORT} is already in use here")
        holder.listen()
        result = bench("--size-mib", "1")
    assert result.returncode == 2
    assert f"{GLUSTER_HOST}:{GLUSTERD_PORT} is in use" in result.stderr


def test_glusterd_keeps_all_its_state_in_the_benchmark_directory(tmp_path: Path) -> None:
    volfile = glusterd_volfile(tmp_path)
    for option in ("working-directory", "run-directory", "glusterd-sockfile", "logging-directory"):
        line = next(line for line in volfile.splitlines() if f"option {option} " in line)
        assert line.split()[-1].startswith(str(tmp_path)), line
    assert f"option transport.socket.bind-address {GLUSTER_HOST}" in volfile
    assert GLUSTER_HOST.startswith("127.") and GLUSTER_HOST != "127.0.0.1"


@pytest.mark.skipif(shutil.which("glusterd") is None, reason="GlusterFS is not installed (glusterfs-server)")
def test_same_dd_workload_on_both_and_everything_stopped_afterwards() -> None:
    result = bench("--size-mib", "8", "--rounds", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for system in ("walrusfs", "gluster"):
        assert report[f"{system}_write_mb_s"] > 0 and report[f"{system}_cold_read_mb_s"] > 0
        assert report[f"{system}_write_servers_cpu_s_per_gib"] > 0  # bricks / nodes were measured
    assert report["write_ratio"] == pytest.approx(report["walrusfs_write_mb_s"] / report["gluster_write_mb_s"])
    assert set(report["missed"]) <= set(report["targets"])
    scratch = next(line.split(" in ")[-1] for line in result.stderr.splitlines() if line.startswith("bench gluster:"))
    assert not Path(scratch).exists()
    assert scratch not in Path("/proc/mounts").read_text()
    for pid in filter(str.isdigit, os.listdir("/proc")):  # no glusterd, brick or client left from this run
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert scratch.encode() not in cmdline, cmdline
