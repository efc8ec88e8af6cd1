"""``walrusfs bench mount``: the whole filesystem as a user sees it, over a bundled 7-node network.

Starts its own network (7 node processes on 127.0.0.1) and a mount in a temporary directory, then
measures (1 MB = 10^6 bytes):

- sequential write of one ``--size-mib`` file with 1 MiB writes, including the final fsync (which
  returns only once every block is certified);
- cold sequential read of it with 1 MiB reads, after unmounting, emptying the read cache and
  mounting again (every byte comes from the nodes and is verified);
- creation of ``--files`` files of ``--file-kib`` KiB (open, write, close: files/s as the user sees
  it), then separately the time until all of them are certified (what ``walrusfs umount`` waits for);
- cold reading of those files back (files/s), after another unmount + empty cache + mount;
- ``tar -x`` of a generated source-like tree (``--tar-files`` files, ``--tar-mib`` MiB; the same tree
  unpacked on the scratch directory's local disk is the reference), then the time until it is certified;
- ``--sqlite-commits`` small sqlite transactions in a database in the mount, each commit one fsync of
  its WAL (mount_workloads.py): p50 and p99 latency;
- the mount daemon's memory: peak RSS (VmHWM) and the highest VmRSS sampled every 0.2 s.

``--compare-encryption ROUNDS`` measures instead what encryption costs: the sequential write and
cold read above, on an unencrypted (``mkfs --no-encryption``) and an encrypted filesystem of the
same network, alternating (every other round encrypted first), ROUNDS times each, and reports both
medians, their ratio, and each round's ratio (the spread).

Everything started is stopped by its pid, and the temporary directory removed, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..ports import free_port_range
from .mount_workloads import make_tree_tar, sqlite_commits, untar
from .report import emit, mb_per_s, process_cpu_seconds, progress, scratch_dir

MiB = 1 << 20
N_NODES = 7
TARGETS = {"write_mb_s": 150.0, "cold_read_mb_s": 250.0, "create_files_per_s": 2000.0, "peak_rss_mb": 400.0,
           "sqlite_commit_p50_ms": 30.0}
LOWER_IS_BETTER = ("peak_rss_mb", "sqlite_commit_p50_ms")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("mount", help="filesystem write/read/small-file speed and daemon memory")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the sequential file (default 1024)")
    parser.add_argument("--files", type=int, default=10000, help="small files to create (default 10000)")
    parser.add_argument("--file-kib", type=int, default=4, help="size of each small file, KiB (default 4)")
    parser.add_argument("--tar-files", type=int, default=6000,
                        help="files in the tree unpacked with tar -x (default 6000; 0: skip)")
    parser.add_argument("--tar-mib", type=int, default=186, help="size of that tree, MiB (default 186)")
    parser.add_argument("--sqlite-commits", type=int, default=200,
                        help="sqlite transactions in the mount, each commit an fsync (default 200; 0: skip)")
    parser.add_argument("--blob-size", type=int, help="filesystem blob size, MiB (default: mkfs's)")
    parser.add_argument("--compare-encryption", type=int, metavar="ROUNDS", default=0,
                        help="instead: sequential write and cold read on an unencrypted and an encrypted "
                        "filesystem, alternating ROUNDS times each, and the ratio of their medians")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _is_mounted(mountpoint: Path) -> str | None:
    """The FUSE device minor of the mount at ``mountpoint``, or None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mountpoint):
            return fields[2].split(":")[1]
    return None


class MemorySampler(threading.Thread):
    """Samples VmRSS and VmHWM of the current mount daemon every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pid: int | None = None
        self.max_rss = 0
        self.max_hwm = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    self.max_rss = max(self.max_rss, int(line.split()[1]) * 1024)
                elif line.startswith("VmHWM:"):
                    self.max_hwm = max(self.max_hwm, int(line.split()[1]) * 1024)
        except OSError:
            pass

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()


class Bench:
    def __init__(self, root: Path, blob_size: int | None, name: str = "bench", mkfs_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.walrusfs = str(Path(sys.executable).with_name("walrusfs"))
        if not Path(self.walrusfs).exists():
            self.walrusfs = shutil.which("walrusfs") or self.walrusfs
        self.env = {**os.environ, "WALRUSFS_HOME": str(root / "home")}
        self.blob_size = blob_size
        self.nodes: list[subprocess.Popen] = []
        self.mountpoint = root / "mnt"
        self.daemon_pid: int | None = None
        self.name = name
        self.mkfs_args = mkfs_args
        self.state = root / "home" / "fs" / name
        self.sampler = MemorySampler()

    # --- setup and teardown -------------------------------------------------------------------------

    def start_network(self) -> None:
        from ..cluster import init_cluster, wait_process_healthy

        committee = init_cluster(self.root / "net", nodes=N_NODES, base_port=free_port_range(N_NODES))
        for info in committee.nodes:
            directory = self.root / "net" / info.id
            with open(directory / "node.log", "ab") as log:
                self.nodes.append(subprocess.Popen(
                    [sys.executable, "-m", "nodes", "--config", str(directory / "config.toml")],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory))
        deadline = time.monotonic() + 60
        for info, process in zip(committee.nodes, self.nodes, strict=True):
            wait_process_healthy(info, process, self.root / "net" / info.id / "node.log", deadline)

    def _cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run([self.walrusfs, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"walrusfs {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def mkfs(self) -> None:
        args = ["mkfs", self.name, "--committee", str(self.root / "net" / "committee.toml"),
                "--writer-key", str(self.root / "net" / "writer.key"), *self.mkfs_args]
        if self.blob_size:
            args += ["--blob-size", str(self.blob_size)]
        self._cli(*args)

    def mount(self) -> None:
        self.mountpoint.mkdir(exist_ok=True)
        self._cli("mount", self.name, str(self.mountpoint), timeout=120)
        self.daemon_pid = int(json.loads(os.getxattr(self.mountpoint, "walrusfs.status"))["pid"])
        self.sampler.pid = self.daemon_pid

    def umount(self) -> None:
        """``walrusfs umount``: waits for every upload, then unmounts; the daemon must exit."""
        self.sampler.sample()
        self._cli("umount", str(self.mountpoint), timeout=1800)
        if self.daemon_pid is not None and not _wait_gone(self.daemon_pid, 60):
            raise RuntimeError(f"mount daemon {self.daemon_pid} still running after umount")
        self.daemon_pid = None

    def clear_cache(self) -> None:
        cache = self.state / "cache"
        if cache.exists():
            for entry in cache.iterdir():
                entry.unlink()

    def cpu(self) -> tuple[float, float]:
        """CPU seconds used so far by (the mount daemon, the nodes): what a phase costs, which on
        a loaded machine says more than its speed."""
        return (process_cpu_seconds([self.daemon_pid] if self.daemon_pid else []),
                process_cpu_seconds([process.pid for process in self.nodes]))

    def status(self) -> dict:
        return json.loads(os.getxattr(self.mountpoint, "walrusfs.status"))

    def cleanup(self) -> None:
        self.sampler.stop()
        minor = _is_mounted(self.mountpoint)
        if minor is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True, timeout=30)
            if _is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
            with contextlib.suppress(OSError):
                Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
        if self.daemon_pid is not None and _alive(self.daemon_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.daemon_pid, signal.SIGTERM)
            if not _wait_gone(self.daemon_pid, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.daemon_pid, signal.SIGKILL)
        for process in self.nodes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.nodes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- measurements ---------------------------------------------------------------------------

    def sequential(self, size_mib: int) -> dict[str, Any]:
        base = bytearray(random.randbytes(MiB))
        path = self.mountpoint / "big"
        progress(f"  sequential write of {size_mib} MiB (1 MiB writes, then fsync)")
        cpu_before = self.cpu()
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for i in range(size_mib):
                base[:8] = i.to_bytes(8, "little")  # every block distinct: no deduplication
                os.write(fd, base)
            written = time.perf_counter()
            os.fsync(fd)
        finally:
            os.close(fd)
        done = time.perf_counter()
        cpu_after = self.cpu()
        total = size_mib * MiB
        results = {"write_bytes": total, "write_seconds": done - start,
                   "write_daemon_cpu_s_per_gib": (cpu_after[0] - cpu_before[0]) * (1 << 30) / total,
                   "write_nodes_cpu_s_per_gib": (cpu_after[1] - cpu_before[1]) * (1 << 30) / total,
                   "write_mb_s": mb_per_s(total, done - start),
                   "write_before_fsync_mb_s": mb_per_s(total, written - start),
                   "fsync_seconds": done - written}
        self.umount()
        self.clear_cache()
        self.mount()
        progress("  cold sequential read (after unmount, empty cache, mount)")
        cpu_before = self.cpu()
        start = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            i = 0
            while True:
                chunk = os.read(fd, MiB)
                if not chunk:
                    break
                if chunk[8:] != base[8:] or int.from_bytes(chunk[:8], "little") != i:
                    raise RuntimeError(f"block {i} of the file read back wrong")
                i += 1
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
        cpu_after = self.cpu()
        if i != size_mib:
            raise RuntimeError(f"read {i} MiB back, wrote {size_mib}")
        results.update(cold_read_seconds=seconds, cold_read_mb_s=mb_per_s(total, seconds),
                       cold_read_daemon_cpu_s_per_gib=(cpu_after[0] - cpu_before[0]) * (1 << 30) / total,
                       cold_read_nodes_cpu_s_per_gib=(cpu_after[1] - cpu_before[1]) * (1 << 30) / total)
        return results

    def small_files(self, count: int, size: int) -> dict[str, Any]:
        directory = self.mountpoint / "small"
        directory.mkdir()
        rng = random.Random(1)
        payload = bytearray(rng.randbytes(size))
        progress(f"  create {count} files of {size} B (open, write, close)")
        cpu_before = self.cpu()
        start = time.perf_counter()
        for i in range(count):
            if size >= 8:
                payload[:8] = i.to_bytes(8, "little")
            fd = os.open(directory / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
        created = time.perf_counter()
        create_daemon_cpu = self.cpu()[0] - cpu_before[0]
        progress("  wait until all of them are certified")
        os.setxattr(self.mountpoint, "walrusfs.flush", b"1")  # what walrusfs umount waits for
        certified = time.perf_counter()
        results = {"files": count, "file_bytes": size, "create_seconds": created - start,
                   "create_files_per_s": count / (created - start),
                   "create_daemon_cpu_ms_per_file": create_daemon_cpu * 1000 / count,
                   "certify_after_create_seconds": certified - created,
                   "create_and_certify_files_per_s": count / (certified - start)}
        self.umount()
        self.clear_cache()
        self.mount()
        progress("  cold read of every file (after unmount, empty cache, mount)")
        start = time.perf_counter()
        for i in range(count):
            with open(directory / f"f{i:06d}", "rb") as handle:
                data = handle.read()
            if len(data) != size or (size >= 8 and int.from_bytes(data[:8], "little") != i):
                raise RuntimeError(f"small file {i} read back wrong")
        seconds = time.perf_counter() - start
        results.update(read_seconds=seconds, read_files_per_s=count / seconds)
        return results

    def tar_x(self, files: int, size_mib: int) -> dict[str, Any]:
        tarball = self.root / "tree.tar"
        progress(f"  tar -x of a tree of {files} files, {size_mib} MiB (generated in {tarball})")
        files, total = make_tree_tar(tarball, files, size_mib * MiB)
        local = untar(tarball, self.root / "tree-local")  # the same on local disk: the reference
        cpu_before = self.cpu()
        seconds = untar(tarball, self.mountpoint / "tree")
        cpu_after = self.cpu()
        start = time.perf_counter()
        os.setxattr(self.mountpoint, "walrusfs.flush", b"1")
        certified = time.perf_counter() - start
        result = subprocess.run(["diff", "-r", "-q", str(self.root / "tree-local"), str(self.mountpoint / "tree")],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"the tree unpacked in the mount differs: {result.stdout[:500]}{result.stderr[:500]}")
        shutil.rmtree(self.root / "tree-local")
        tarball.unlink()
        return {"tar_files": files, "tar_bytes": total, "tar_x_seconds": seconds, "tar_x_local_seconds": local,
                "tar_x_files_per_s": files / seconds, "tar_certify_after_seconds": certified,
                # CPU of the unpacking (uploads running meanwhile included): what a loaded machine barely moves
                "tar_x_daemon_cpu_s": cpu_after[0] - cpu_before[0], "tar_x_nodes_cpu_s": cpu_after[1] - cpu_before[1]}

    def sqlite(self, commits: int) -> dict[str, Any]:
        progress(f"  {commits} sqlite commits in the mount (each one fsync)")
        cpu_before = self.cpu()
        results = sqlite_commits(self.mountpoint / "bench.sqlite", commits)
        cpu_after = self.cpu()
        results.update(sqlite_daemon_cpu_ms_per_commit=(cpu_after[0] - cpu_before[0]) * 1000 / commits,
                       sqlite_nodes_cpu_ms_per_commit=(cpu_after[1] - cpu_before[1]) * 1000 / commits)
        return results


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    bench = Bench(root, args.blob_size)
    try:
        progress(f"bench mount: starting a {N_NODES}-node network in {root}")
        bench.start_network()
        bench.mkfs()
        bench.mount()
        bench.sampler.start()
        results: dict[str, Any] = {"nodes": N_NODES, "size_mib": args.size_mib}
        if args.sqlite_commits:
            results.update(bench.sqlite(args.sqlite_commits))
        if args.tar_files:
            results.update(bench.tar_x(args.tar_files, args.tar_mib))
        if args.size_mib:
            results.update(bench.sequential(args.size_mib))
        if args.files:
            results.update(bench.small_files(args.files, args.file_kib * 1024))
        bench.umount()
        bench.sampler.sample()
        results["peak_rss_mb"] = max(bench.sampler.max_hwm, bench.sampler.max_rss) / 1e6
        results["max_sampled_rss_mb"] = bench.sampler.max_rss / 1e6
        results["targets"] = TARGETS
        results["missed"] = [key for key, target in TARGETS.items() if key in results and
                             (results[key] > target if key in LOWER_IS_BETTER else results[key] < target)]
        return results
    finally:
        bench.cleanup()


COMPARED = ("write_mb_s", "cold_read_mb_s", "write_daemon_cpu_s_per_gib", "cold_read_daemon_cpu_s_per_gib")


def compare_encryption(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """The sequential phases on unencrypted and encrypted filesystems of one network, alternating."""
    network = Bench(root, args.blob_size)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "encrypted": []}
    try:
        progress(f"bench mount --compare-encryption: starting a {N_NODES}-node network in {root}")
        network.start_network()
        kinds: tuple[tuple[str, tuple[str, ...]], ...] = (("plain", ("--no-encryption",)), ("encrypted", ()))
        for round_ in range(args.compare_encryption):
            # Every other round encrypted first: whatever the first run of a round pays (or is
            # spared: the nodes still busy with the last one's data) falls on both kinds alike.
            for mode, mkfs_args in kinds if round_ % 2 == 0 else kinds[::-1]:
                progress(f"round {round_ + 1}/{args.compare_encryption}: {mode}")
                bench = Bench(root, args.blob_size, f"{mode}-{round_}", mkfs_args)
                bench.nodes = network.nodes  # the same node processes: CPU is counted on them
                try:
                    bench.mkfs()
                    bench.mount()
                    runs[mode].append(bench.sequential(args.size_mib))
                    bench.umount()
                finally:
                    bench.nodes = []  # the network's to stop
                    bench.cleanup()
                    shutil.rmtree(bench.state, ignore_errors=True)
    finally:
        network.cleanup()
    results: dict[str, Any] = {"nodes": N_NODES, "size_mib": args.size_mib, "rounds": args.compare_encryption}
    for mode, measured in runs.items():
        for key in COMPARED:
            results[f"{mode}_{key}"] = statistics.median(run[key] for run in measured)
            results[f"{mode}_{key}_rounds"] = [run[key] for run in measured]
    for key in COMPARED:
        results[f"encrypted_over_plain_{key}"] = results[f"encrypted_{key}"] / results[f"plain_{key}"]
        # The spread: each round's encrypted run over its plain run (on a shared machine these
        # move by more than the 5% bound; the medians above are the figure).
        results[f"encrypted_over_plain_{key}_rounds"] = [
            encrypted[key] / plain[key] for plain, encrypted in zip(runs["plain"], runs["encrypted"], strict=True)]
    results["load_average"] = os.getloadavg()[0]
    return results


def run(args: argparse.Namespace) -> int:
    if args.compare_encryption:
        with scratch_dir("mount", keep=False) as root:  # the comparison has always ignored --keep
            r = compare_encryption(args, root)
        emit(r, args.json, [(f"{key} (median of {r['rounds']})",
                             f"plain {r[f'plain_{key}']:8.2f}   encrypted {r[f'encrypted_{key}']:8.2f}   "
                             f"ratio {r[f'encrypted_over_plain_{key}']:.3f} "
                             f"(rounds {min(r[f'encrypted_over_plain_{key}_rounds']):.3f}-"
                             f"{max(r[f'encrypted_over_plain_{key}_rounds']):.3f})") for key in COMPARED]
             + [("load average at the end", f"{r['load_average']:.1f}")])
        return 0
    with scratch_dir("mount", args.keep) as root:
        r = measure(args, root)

    def mark(key: str) -> str:
        return "  (MISSED target " + (f"<= {TARGETS[key]:.0f})" if key in LOWER_IS_BETTER else
                                      f">= {TARGETS[key]:.0f})") if key in r["missed"] else ""

    rows = [("network", f"{N_NODES} local nodes")]
    if "sqlite_commits" in r:
        rows.append((f"{r['sqlite_commits']} sqlite commits (fsync each)",
                     f"p50 {r['sqlite_commit_p50_ms']:.1f} ms{mark('sqlite_commit_p50_ms')}, "
                     f"p99 {r['sqlite_commit_p99_ms']:.1f} ms, max {r['sqlite_commit_max_ms']:.1f} ms; CPU per "
                     f"commit: daemon {r['sqlite_daemon_cpu_ms_per_commit']:.1f} ms, nodes "
                     f"{r['sqlite_nodes_cpu_ms_per_commit']:.1f} ms"))
    if "tar_files" in r:
        rows += [(f"tar -x of {r['tar_files']} files, {r['tar_bytes'] / 1e6:.0f} MB",
                  f"{r['tar_x_seconds']:8.2f} s ({r['tar_x_files_per_s']:.0f} files/s; local disk "
                  f"{r['tar_x_local_seconds']:.2f} s; CPU daemon {r['tar_x_daemon_cpu_s']:.1f} s, "
                  f"nodes {r['tar_x_nodes_cpu_s']:.1f} s)"),
                 ("  ... until all certified", f"{r['tar_certify_after_seconds']:8.1f} s more")]
    if "write_mb_s" in r:
        rows += [(f"sequential write {r['size_mib']} MiB + fsync", f"{r['write_mb_s']:8.1f} MB/s{mark('write_mb_s')}  "
                  f"({r['write_before_fsync_mb_s']:.0f} MB/s before fsync, fsync {r['fsync_seconds']:.1f} s)"),
                 ("cold sequential read", f"{r['cold_read_mb_s']:8.1f} MB/s{mark('cold_read_mb_s')}")]
    if "files" in r:
        rows += [(f"create {r['files']} files of {r['file_bytes']} B", f"{r['create_files_per_s']:8.0f} files/s"
                  f"{mark('create_files_per_s')} (daemon CPU {r['create_daemon_cpu_ms_per_file']:.2f} ms per file)"),
                 ("  ... until all certified", f"{r['certify_after_create_seconds']:8.1f} s more "
                  f"({r['create_and_certify_files_per_s']:.0f} files/s overall)"),
                 ("cold read of the small files", f"{r['read_files_per_s']:8.0f} files/s")]
    rows.append(("mount daemon peak RSS", f"{r['peak_rss_mb']:8.0f} MB{mark('peak_rss_mb')}"))
    emit(r, args.json, rows)
    return 0
