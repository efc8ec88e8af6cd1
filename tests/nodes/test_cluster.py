"""``walrusfs cluster init|up|status|down`` and ``python -m nodes`` from the command line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from node_harness import free_port

from walrusfs.cluster import DEFAULT_BASE_PORT, DEFAULT_NODES
from walrusfs.committee import Committee
from walrusfs.keys import load_key, public_key_text
from walrusfs.ports import ephemeral_range


def walrusfs(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"walrusfs {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def free_port_range(count: int) -> int:
    return free_port(count)


def recorded_pids(root: Path) -> list[int]:
    return [int(p.read_text()) for p in root.glob("node-*/node.pid")]


def kill_recorded(root: Path) -> None:
    """No node a test started outlives it: SIGKILL by recorded pid (if that pid is still this node)."""
    for pid in recorded_pids(root):
        try:
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "cluster"
    yield root
    kill_recorded(root)


@pytest.fixture
def other_cluster_dir(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "other-cluster"
    yield root
    kill_recorded(root)


def without_epochs(config: str) -> str:
    """A node config's text without its [epochs] table (the last table `cluster init` writes)."""
    return re.sub(r"(?ms)^\[epochs\]\n.*?(?=^\[|\Z)", "", config)


def table(output: str) -> dict[str, dict[str, str]]:
    header, *rows = output.strip().splitlines()
    names = header.split()
    return {row.split()[0]: dict(zip(names, row.split(), strict=False)) for row in rows}


def test_init_up_status_down(cluster_dir: Path) -> None:
    base = free_port_range(4)
    walrusfs("cluster", "init", cluster_dir, "--nodes", 4, "--shards", 7, "--base-port", base)
    committee = Committee.load(cluster_dir / "committee.toml")
    assert committee.n_shards == 7 and [n.shards for n in committee.nodes] == [(0, 4), (1, 5), (2, 6), (3,)]
    assert (cluster_dir / "writer.key").stat().st_mode & 0o777 == 0o600
    refused = walrusfs("cluster", "init", cluster_dir, check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr

    up = table(walrusfs("cluster", "up", cluster_dir).stdout)
    assert [row["status"] for row in up.values()] == ["up"] * 4
    assert all(int(row["used"]) >= 0 and int(row["free"]) > 0 for row in up.values())  # space on each node
    assert up["node-2"]["url"] == f"http://127.0.0.1:{base + 2}" and up["node-2"]["shards"] == "2,6"
    pids = sorted(recorded_pids(cluster_dir))
    for node in committee.nodes:
        assert httpx.get(f"{node.url}/v1/health").json()["shards"] == list(node.shards)

    again = table(walrusfs("cluster", "up", cluster_dir).stdout)  # idempotent: running nodes stay
    assert sorted(recorded_pids(cluster_dir)) == pids
    assert [row["pid"] for row in again.values()] == [row["pid"] for row in up.values()]
    forced = walrusfs("cluster", "init", cluster_dir, "--force", check=False)
    assert forced.returncode != 0 and "cluster down" in forced.stderr

    os.kill(pids[1], signal.SIGKILL)  # one node dies: status says so, up restarts only that one
    status = walrusfs("cluster", "status", cluster_dir, check=False)
    assert status.returncode != 0 and sorted(row["status"] for row in table(status.stdout).values()) == \
        ["down", "up", "up", "up"]
    walrusfs("cluster", "up", cluster_dir)
    assert len(set(recorded_pids(cluster_dir)) & set(pids)) == 3

    down = walrusfs("cluster", "down", cluster_dir).stdout
    assert down.count("stopped") == 4
    assert recorded_pids(cluster_dir) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    status = table(walrusfs("cluster", "status", cluster_dir, check=False).stdout)
    assert {row["status"] for row in status.values()} == {"down"}
    assert "node-0: not running" in walrusfs("cluster", "down", cluster_dir).stdout


def test_node_keygen_prints_the_public_key_and_never_overwrites(tmp_path: Path) -> None:
    public = walrusfs("node", "keygen", tmp_path / "k").stdout.strip()
    assert public == public_key_text(load_key(tmp_path / "k"))
    again = walrusfs("node", "keygen", tmp_path / "k", check=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr


def test_up_names_the_node_that_cannot_start(cluster_dir: Path) -> None:
    base = free_port_range(2)
    walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--base-port", base, "--shards", 4)
    (cluster_dir / "node-1" / "node.key").write_text("not a key\n")
    failed = walrusfs("cluster", "up", cluster_dir, "--timeout", 20, check=False)
    assert failed.returncode != 0
    assert "node-1" in failed.stderr and str(cluster_dir / "node-1" / "node.log") in failed.stderr
    assert "does not hold an ed25519 key" in failed.stderr
    assert "node node-1 exited with status 2 while starting" in failed.stderr  # status 2: a bad configuration
    walrusfs("cluster", "down", cluster_dir)


@pytest.mark.parametrize(("edit", "complaint"), [
    (lambda text: text.replace('node_id = "node-0"', 'node_id = "node-9"'), "not in committee"),
    (lambda text: text.replace("listen = ", "listen_at = "), "unknown settings listen_at"),
    (lambda text: text.replace('signing_key = "node.key"', 'signing_key = "../node-1/node.key"'),
     "does not match the public key"),
    (lambda text: text + "max_blob_size = -1\n", "max_blob_size"),
    (lambda text: text + "[http]\nmax_connections = 10\nmax_connections_per_peer = 20\n",
     "max_connections_per_peer must be at most max_connections"),
    (lambda text: text + "[http]\nmax_connections = 0\n", "[http] max_connections must be an integer"),
    # (cluster init writes an [epochs] table with the operator's key: replaced, not appended to)
    (lambda text: without_epochs(text) + '[epochs]\nproposers = ["not a key"]\n', "[epochs] proposers: bad public key"),
    (lambda text: without_epochs(text) + "[epochs]\nproposer = []\n", "[epochs]: unknown settings proposer"),
    (lambda text: text.replace('committee = "../committee.toml"', 'committee = "missing.toml"'),
     "cannot read committee file"),
])
def test_a_node_refuses_to_start_on_a_bad_config(cluster_dir: Path, edit, complaint: str) -> None:
    walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", free_port_range(2))
    config = cluster_dir / "node-0" / "config.toml"
    config.write_text(edit(config.read_text()))
    result = subprocess.run([sys.executable, "-m", "nodes", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert complaint in result.stderr and "refusing to start" in result.stderr


def test_default_node_ports_lie_below_the_ephemeral_range(cluster_dir: Path) -> None:
    """Outgoing connections take local ports from the kernel's ephemeral range: the bundled network's
    ports stay out of it, and `init` warns, with what to do, when told to use ports inside it."""
    low, high = ephemeral_range()
    assert low > DEFAULT_BASE_PORT + DEFAULT_NODES - 1
    quiet = walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", free_port_range(2))
    assert "ephemeral" not in quiet.stderr
    inside = low + 1000
    warned = walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", inside, "--force")
    assert f"node ports {inside}-{inside + 1} lie in the kernel's ephemeral port range ({low}-{high})" in warned.stderr
    assert f"ip_local_reserved_ports={inside}-{inside + 1}" in warned.stderr


def test_a_node_whose_port_is_taken_in_the_ephemeral_range_says_why(cluster_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # what an outgoing connection's local port looks like
        taken.listen()
        port = taken.getsockname()[1]
        walrusfs("cluster", "init", cluster_dir, "--nodes", 1, "--shards", 4, "--base-port", port)
        config = cluster_dir / "node-0" / "config.toml"
        result = subprocess.run([sys.executable, "-m", "nodes", "--config", str(config)],
                                capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"could not listen on 127.0.0.1:{port}" in result.stderr
    assert "ephemeral port range" in result.stderr and f"ip_local_reserved_ports={port}" in result.stderr


def test_up_refuses_ports_another_cluster_serves(cluster_dir: Path, other_cluster_dir: Path) -> None:
    """A second cluster on the same ports: `up` must not count the first one's nodes as its own."""
    base = free_port_range(2)
    walrusfs("cluster", "init", other_cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", base)
    walrusfs("cluster", "up", other_cluster_dir)
    walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", base)
    up = walrusfs("cluster", "up", cluster_dir, "--timeout", 20, check=False)
    assert up.returncode != 0, up.stdout
    assert f"127.0.0.1:{base}" in up.stderr and "another walrusfs node" in up.stderr
    assert "--base-port" in up.stderr  # says what to do
    assert recorded_pids(cluster_dir) == []  # nothing half started
    status = walrusfs("cluster", "status", cluster_dir, check=False)
    assert status.returncode != 0 and {row["status"] for row in table(status.stdout).values()} == {"down"}
    walrusfs("cluster", "down", other_cluster_dir)


def test_up_says_which_port_is_taken_by_another_program(cluster_dir: Path) -> None:
    base = free_port_range(2)
    walrusfs("cluster", "init", cluster_dir, "--nodes", 2, "--shards", 4, "--base-port", base)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 1))
        squatter.listen()
        up = walrusfs("cluster", "up", cluster_dir, "--timeout", 20, check=False)
    assert up.returncode != 0
    assert "node-1" in up.stderr and f"127.0.0.1:{base + 1}" in up.stderr and "ss -ltnp" in up.stderr
    assert recorded_pids(cluster_dir) == []


def test_health_names_the_node_by_its_key(cluster_dir: Path) -> None:
    walrusfs("cluster", "init", cluster_dir, "--nodes", 1, "--shards", 4, "--base-port", free_port_range(1))
    walrusfs("cluster", "up", cluster_dir)
    node = Committee.load(cluster_dir / "committee.toml").nodes[0]
    assert httpx.get(f"{node.url}/v1/health").json()["public_key"] == public_key_text(
        load_key(cluster_dir / "node-0" / "node.key"))
    walrusfs("cluster", "down", cluster_dir)
