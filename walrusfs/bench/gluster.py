"""``walrusfs bench gluster``: walrusfs and GlusterFS side by side, the same dd workload on both.

GlusterFS is what a user would pick instead on one machine, so it is the reference for the mount's
speed. This benchmark sets up, in one temporary directory:

- walrusfs: the bundled 7-node network on 127.0.0.1 and a fresh filesystem per round, mounted;
- GlusterFS: its own ``glusterd`` (state, sockets and run files in the temporary directory, bound to
  127.0.0.2 — gluster refuses 127.0.0.1 for bricks, any other loopback address is accepted) and a
  dispersed 4 + 2 volume on six bricks, mounted with its FUSE client.

Then, ``--rounds`` times and alternating which system goes first, on each system: ``dd bs=1M
conv=fsync`` of one ``--size-mib`` file of random bytes into the mount; unmount, drop the kernel's
caches (``/proc/sys/vm/drop_caches``; walrusfs's read cache is emptied too) and mount again; ``dd
bs=1M`` of the file back to /dev/null, then a byte-for-byte comparison with the source (not timed).
It reports the medians, walrusfs ÷ GlusterFS, and the CPU seconds per GiB each side spent (walrusfs:
mount daemon and nodes; GlusterFS: FUSE client and bricks).

GlusterFS comes from the distribution (``apt-get install glusterfs-server``); without it this
benchmark says so and exits 2. glusterd listens on its fixed management port 24007 (on 127.0.0.2
only), which its bricks and client expect; if that port is taken, the benchmark stops before
starting anything. Everything started is stopped by its pid and the directory removed, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from .mount import Bench, _alive, _is_mounted, _wait_gone
from .report import emit, mb_per_s, process_cpu_seconds, progress, scratch_dir

MiB = 1 << 20
GiB = 1 << 30
GLUSTER_HOST = "127.0.0.2"
GLUSTERD_PORT = 24007  # bricks and clients ask glusterd here; the brick processes have no option for another
VOLUME = "walrusfs-bench"
DISPERSE, REDUNDANCY = 6, 2
# The targets: walrusfs ÷ GlusterFS, and CPU per GiB written on the walrusfs side.
TARGETS = {"write_ratio": 1.0, "cold_read_ratio": 1.2, "write_daemon_cpu_s_per_gib": 6.0,
           "write_nodes_cpu_s_per_gib": 7.0}


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("gluster", help="walrusfs and a GlusterFS 4+2 dispersed volume, same dd workload")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the file dd writes (default 1024)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds on each system, alternating (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


class GlusterUnavailable(RuntimeError):
    """GlusterFS is not installed, or its port is taken: nothing was started."""


def check_gluster() -> None:
    missing = [tool for tool in ("glusterd", "gluster", "glusterfs") if shutil.which(tool) is None]
    if missing:
        raise GlusterUnavailable(f"{', '.join(missing)} not found: install GlusterFS first "
                                 "(apt-get update && apt-get install glusterfs-server)")
    with socket.socket() as probe:
        try:
            probe.bind((GLUSTER_HOST, GLUSTERD_PORT))
        except OSError as error:
            raise GlusterUnavailable(f"{GLUSTER_HOST}:{GLUSTERD_PORT} is in use ({error.strerror}): another "
                                     "glusterd runs here; stop it, or run this benchmark elsewhere") from None


def glusterd_volfile(root: Path) -> str:
    """glusterd's own configuration: every path under ``root``, listening on GLUSTER_HOST only,
    bricks on ports 49700-49799."""
    return "\n".join([
        "volume management",
        "    type mgmt/glusterd",
        f"    option working-directory {root / 'state'}",
        f"    option run-directory {root / 'run'}",
        f"    option glusterd-sockfile {root / 'glusterd.socket'}",
        f"    option logging-directory {root / 'logs'}",
        "    option transport-type socket",
        f"    option transport.socket.bind-address {GLUSTER_HOST}",
        "    option ping-timeout 0",
        "    option event-threads 1",
        "    option base-port 49700",
        "    option max-port 49799",
        "end-volume",
        "",
    ])


class Gluster:
    """One private glusterd, one dispersed volume on six bricks under ``root``, and its FUSE mount."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mountpoint = root / "mnt"
        self.glusterd: subprocess.Popen | None = None
        self.client_pid: int | None = None
        self.volume_started = False

    def _cli(self, *args: str) -> str:
        command = ["gluster", f"--glusterd-sock={self.root / 'glusterd.socket'}", "--mode=script",
                   f"--log-file={self.root / 'logs' / 'cli.log'}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"gluster {' '.join(args)} failed: {(result.stderr or result.stdout).strip()} "
                               f"(glusterd's log: {self.root / 'glusterd.log'})")
        return result.stdout

    def start(self) -> None:
        for sub in ("state", "run", "bricks", "mnt", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "glusterd.vol").write_text(glusterd_volfile(self.root))
        self.glusterd = subprocess.Popen(
            ["glusterd", "-N", "-f", str(self.root / "glusterd.vol"), "--log-file", str(self.root / "glusterd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root)
        deadline = time.monotonic() + 30
        while not (self.root / "glusterd.socket").exists():
            if self.glusterd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"glusterd did not start; see {self.root / 'glusterd.log'}")
            time.sleep(0.1)
        bricks = [f"{GLUSTER_HOST}:{self.root / 'bricks' / f'b{i}'}" for i in range(DISPERSE)]
        # force: bricks on the root filesystem (gluster wants a mount of their own otherwise)
        self._cli("volume", "create", VOLUME, "disperse", str(DISPERSE), "redundancy", str(REDUNDANCY),
                  *bricks, "force")
        self._cli("volume", "start", VOLUME)
        self.volume_started = True

    def mount(self) -> None:
        pid_file = self.root / "client.pid"
        pid_file.unlink(missing_ok=True)
        subprocess.run(["glusterfs", f"--volfile-server={GLUSTER_HOST}", f"--volfile-id={VOLUME}",
                        f"--log-file={self.root / 'client.log'}", f"--pid-file={pid_file}", str(self.mountpoint)],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while _is_mounted(self.mountpoint) is None or not pid_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the GlusterFS client did not mount; see {self.root / 'client.log'}")
            time.sleep(0.1)
        self.client_pid = int(pid_file.read_text())

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mountpoint)], check=True, capture_output=True, timeout=120)
        if self.client_pid is not None and not _wait_gone(self.client_pid, 30):
            raise RuntimeError(f"GlusterFS client {self.client_pid} still running after umount")
        self.client_pid = None

    def _server_pids(self) -> list[int]:
        """Bricks and the self-heal daemon, from the pid files glusterd keeps under our run directory,
        kept only if the process still runs from our directory (a pid file may outlive its process)."""
        pids = []
        for pid_file in (self.root / "run").rglob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if str(self.root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of (the FUSE client, the bricks and glusterd's helpers)."""
        return (process_cpu_seconds([self.client_pid] if self.client_pid else []),
                process_cpu_seconds(self._server_pids()))

    def cleanup(self) -> None:
        if _is_mounted(self.mountpoint) is not None:
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, timeout=60)
        if self.client_pid is not None and _alive(self.client_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.client_pid, signal.SIGTERM)
        if self.volume_started and self.glusterd is not None and self.glusterd.poll() is None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._cli("volume", "stop", VOLUME, "force")
        for pid in self._server_pids():  # what volume stop did not end
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self.glusterd is not None and self.glusterd.poll() is None:
            self.glusterd.terminate()
            try:
                self.glusterd.wait(15)
            except subprocess.TimeoutExpired:
                self.glusterd.kill()
                self.glusterd.wait()
        for pid in self._server_pids():
            if not _wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


class Walrusfs:
    """The walrusfs side: one network for the whole run, a fresh filesystem per round (the same
    source file written twice into one filesystem would be deduplicated)."""

    def __init__(self, root: Path) -> None:
        self.network = Bench(root, None)
        self.round_bench: Bench | None = None
        self.mountpoint = self.network.mountpoint

    def start(self) -> None:
        self.network.start_network()

    def new_round(self, number: int) -> None:
        if self.round_bench is not None:
            self.end_round()
        bench = Bench(self.network.root, None, f"round-{number}")
        bench.nodes = self.network.nodes  # the same node processes: their CPU counts here
        bench.mkfs()
        bench.mount()
        self.round_bench = bench

    def end_round(self) -> None:
        bench = self.round_bench
        if bench is None:
            return
        try:
            if bench.daemon_pid is not None:
                bench.umount()
        finally:
            bench.nodes = []  # the network's to stop
            bench.cleanup()
            shutil.rmtree(bench.state, ignore_errors=True)
            self.round_bench = None

    def remount_cold(self) -> bool:
        """Unmount, empty the read cache and the kernel's, mount again; whether the kernel's dropped."""
        assert self.round_bench is not None
        self.round_bench.umount()
        self.round_bench.clear_cache()
        dropped = drop_kernel_caches()
        self.round_bench.mount()
        return dropped

    def cpu(self) -> tuple[float, float]:
        assert self.round_bench is not None
        return self.round_bench.cpu()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.end_round()
        self.network.cleanup()


def drop_kernel_caches() -> bool:
    """Write back and drop the page cache, so a read comes from the storage and not from memory
    (also the bricks' and the nodes' files). False where the kernel does not allow it."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def dd(source: Path, target: Path, *extra: str) -> float:
    """Wall seconds of ``dd bs=1M`` from ``source`` to ``target``."""
    start = time.perf_counter()
    subprocess.run(["dd", f"if={source}", f"of={target}", "bs=1M", "status=none", *extra],
                   check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - start


def one_round(system: Gluster | Walrusfs, source: Path, name: str) -> dict[str, Any]:
    size = source.stat().st_size
    target = system.mountpoint / name
    cpu_before = system.cpu()
    write_seconds = dd(source, target, "conv=fsync")
    cpu_after = system.cpu()
    result = {"write_mb_s": mb_per_s(size, write_seconds),
              "write_client_cpu_s_per_gib": (cpu_after[0] - cpu_before[0]) * GiB / size,
              "write_servers_cpu_s_per_gib": (cpu_after[1] - cpu_before[1]) * GiB / size}
    if isinstance(system, Walrusfs):
        dropped = system.remount_cold()
    else:
        system.umount()
        dropped = drop_kernel_caches()
        system.mount()
    cpu_before = system.cpu()
    read_seconds = dd(target, Path("/dev/null"))
    cpu_after = system.cpu()
    if not filecmp.cmp(source, target, shallow=False):
        raise RuntimeError(f"{target} read back differs from what was written")
    result.update(kernel_caches_dropped=dropped, cold_read_mb_s=mb_per_s(size, read_seconds),
                  cold_read_client_cpu_s_per_gib=(cpu_after[0] - cpu_before[0]) * GiB / size,
                  cold_read_servers_cpu_s_per_gib=(cpu_after[1] - cpu_before[1]) * GiB / size)
    return result


def write_source(path: Path, size_mib: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(MiB))


MEASURED = ("write_mb_s", "cold_read_mb_s", "write_client_cpu_s_per_gib", "write_servers_cpu_s_per_gib",
            "cold_read_client_cpu_s_per_gib", "cold_read_servers_cpu_s_per_gib")


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    gluster = Gluster(root / "gluster")
    walrusfs = Walrusfs(root / "walrusfs")
    runs: dict[str, list[dict[str, Any]]] = {"walrusfs": [], "gluster": []}
    try:
        progress(f"bench gluster: GlusterFS {DISPERSE - REDUNDANCY}+{REDUNDANCY} on {GLUSTER_HOST}, "
                 f"walrusfs on 7 nodes, in {root}")
        gluster.start()
        gluster.mount()
        walrusfs.start()
        for number in range(args.rounds):
            source = root / f"source-{number}"
            write_source(source, args.size_mib)  # new random bytes per round: nothing to deduplicate
            order: list[tuple[str, Gluster | Walrusfs]] = [("gluster", gluster), ("walrusfs", walrusfs)]
            if number % 2:
                order.reverse()
            for name, system in order:
                progress(f"round {number + 1}/{args.rounds}: {name}: dd write {args.size_mib} MiB "
                         "+ fsync, remount, cold dd read")
                if system is walrusfs:
                    walrusfs.new_round(number)
                runs[name].append(one_round(system, source, f"dd-{number}"))
            source.unlink()
        walrusfs.end_round()  # its unmount waits for every upload: a failure there is the run's (cleanup hides it)
    finally:
        walrusfs.cleanup()
        gluster.cleanup()
    results: dict[str, Any] = {"size_mib": args.size_mib, "rounds": args.rounds,
                               "gluster_volume": f"disperse {DISPERSE} redundancy {REDUNDANCY}, FUSE client",
                               "walrusfs_network": "7 nodes",
                               "kernel_caches_dropped": all(run["kernel_caches_dropped"]
                                                            for measured in runs.values() for run in measured)}
    for name, measured in runs.items():
        for key in MEASURED:
            results[f"{name}_{key}"] = statistics.median(run[key] for run in measured)
    results["write_ratio"] = results["walrusfs_write_mb_s"] / results["gluster_write_mb_s"]
    results["cold_read_ratio"] = results["walrusfs_cold_read_mb_s"] / results["gluster_cold_read_mb_s"]
    results["write_daemon_cpu_s_per_gib"] = results["walrusfs_write_client_cpu_s_per_gib"]
    results["write_nodes_cpu_s_per_gib"] = results["walrusfs_write_servers_cpu_s_per_gib"]
    results["targets"] = TARGETS
    results["missed"] = [key for key, target in TARGETS.items()
                         if (results[key] > target if key.endswith("per_gib") else results[key] < target)]
    return results


def run(args: argparse.Namespace) -> int:
    try:
        check_gluster()
    except GlusterUnavailable as error:
        progress(f"bench gluster: {error}")
        return 2
    with scratch_dir("gluster", args.keep) as root:
        r = measure(args, root)

    def row(key: str, unit: str) -> str:
        return (f"walrusfs {r[f'walrusfs_{key}']:7.1f}   GlusterFS {r[f'gluster_{key}']:7.1f} {unit}")

    def mark(key: str) -> str:
        if key not in r["missed"]:
            return ""
        return f"  (MISSED target {'<=' if key.endswith('per_gib') else '>='} {TARGETS[key]:g})"

    rounds = f"median of {r['rounds']}"
    emit(r, args.json, [
        ("systems", f"walrusfs: {r['walrusfs_network']}; GlusterFS: {r['gluster_volume']}"),
        (f"dd write {r['size_mib']} MiB conv=fsync ({rounds})", row("write_mb_s", "MB/s")),
        ("  walrusfs / GlusterFS", f"{r['write_ratio']:.2f}{mark('write_ratio')}"),
        ("cold dd read after remount", row("cold_read_mb_s", "MB/s")),
        ("  walrusfs / GlusterFS", f"{r['cold_read_ratio']:.2f}{mark('cold_read_ratio')}"),
        ("write CPU s/GiB: client (daemon)", row("write_client_cpu_s_per_gib", "")
         + mark("write_daemon_cpu_s_per_gib")),
        ("write CPU s/GiB: servers (nodes)", row("write_servers_cpu_s_per_gib", "")
         + mark("write_nodes_cpu_s_per_gib")),
        ("read CPU s/GiB: client", row("cold_read_client_cpu_s_per_gib", "")),
        ("read CPU s/GiB: servers", row("cold_read_servers_cpu_s_per_gib", "")),
        ("kernel caches dropped before reads", "yes" if r["kernel_caches_dropped"] else "no (not permitted)"),
    ])
    return 0
