"""A seeded random sequence of file operations applied to the mount and to a local directory side by
side: every operation must give the same result (data read, or errno), and the trees must be equal
at the end, and again after a remount that reads everything back from the network.

Reproduce a failure with WALRUSFS_FUZZ_SEED=<seed> (and WALRUSFS_FUZZ_OPS=<count>).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from fs_harness import Filesystem, tree_snapshot

SEED = int(os.environ.get("WALRUSFS_FUZZ_SEED", "20261123"))
OPS = int(os.environ.get("WALRUSFS_FUZZ_OPS", "3000"))
KiB, MiB = 1 << 10, 1 << 20


class Twin:
    """The same relative operations on two roots; each returns (outcome on local, outcome on mount)."""

    def __init__(self, local: Path, mounted: Path) -> None:
        self.roots = (local, mounted)
        self.fds: list[tuple[int, int, str]] = []  # (local fd, mount fd, path at open time)

    def both(self, action, *paths: str):
        outcomes = []
        for root in self.roots:
            try:
                outcomes.append(("ok", action(*[root / p for p in paths])))
            except OSError as error:
                outcomes.append(("error", error.errno))
        return outcomes


def pick_size(rng: random.Random) -> int:
    return rng.choice([0, 1, rng.randint(1, 4 * KiB), rng.randint(4 * KiB, 200 * KiB),
                       rng.randint(MiB - 10, MiB + 10), rng.randint(0, 3 * MiB)])


def run_ops(twin: Twin, rng: random.Random, count: int, log: list[str]) -> None:
    local = twin.roots[0]

    def existing(kind: str) -> list[str]:
        out = []
        for directory, dirs, files in os.walk(local):
            names = dirs if kind == "dir" else files
            out += [os.path.relpath(os.path.join(directory, n), local) for n in names]
        return out

    def any_path() -> str:
        dirs = [".", *existing("dir")]
        parent = rng.choice(dirs[:20]) if rng.random() < 0.8 else rng.choice(dirs)
        return os.path.normpath(os.path.join(parent, rng.choice(["a", "b", "c", "d", "e", "long-" + "x" * 40])))

    def a_file() -> str:
        files = [f for f in existing("file") if not os.path.islink(local / f)]
        return rng.choice(files) if files and rng.random() < 0.9 else any_path()

    for step in range(count):
        op = rng.choices(["write", "read", "truncate", "rename", "unlink", "mkdir", "rmdir", "append",
                          "link", "symlink", "fd_open", "fd_write", "fd_read", "fd_close", "fsync", "listdir"],
                         weights=[20, 15, 6, 6, 4, 4, 2, 6, 2, 2, 3, 6, 4, 3, 1, 2])[0]
        if op == "write":
            path, offset, data = a_file(), pick_size(rng), rng.randbytes(min(pick_size(rng), 512 * KiB))

            def write(p: Path, offset: int = offset, data: bytes = data) -> int:
                fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    return os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            outcomes = twin.both(write, path)
            detail = f"{path} @{offset} +{len(data)}"
        elif op == "append":
            path, data = a_file(), rng.randbytes(rng.randint(1, 70 * KiB))

            def append(p: Path, data: bytes = data) -> int:
                with open(p, "ab") as handle:
                    return handle.write(data)
            outcomes = twin.both(append, path)
            detail = f"{path} +{len(data)}"
        elif op == "read":
            path, offset, length = a_file(), pick_size(rng), pick_size(rng)

            def read(p: Path, offset: int = offset, length: int = length, drop: bool = rng.random() < 0.3) -> bytes:
                fd = os.open(p, os.O_RDONLY)
                try:
                    if drop:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    return os.pread(fd, length, offset)
                finally:
                    os.close(fd)
            outcomes = twin.both(read, path)
            detail = f"{path} @{offset} {length}"
        elif op == "truncate":
            path, size = a_file(), pick_size(rng)
            outcomes = twin.both(lambda p, size=size: os.truncate(p, size), path)
            detail = f"{path} -> {size}"
        elif op == "rename":
            candidates = existing("file") + existing("dir")
            source = rng.choice(candidates) if candidates and rng.random() < 0.9 else any_path()
            target = rng.choice(candidates) if candidates and rng.random() < 0.3 else any_path()
            outcomes = twin.both(os.rename, source, target)
            detail = f"{source} -> {target}"
        elif op == "unlink":
            path = a_file() if rng.random() < 0.8 else any_path()
            outcomes = twin.both(os.unlink, path)
            detail = path
        elif op == "mkdir":
            path = any_path()
            outcomes = twin.both(os.mkdir, path)
            detail = path
        elif op == "rmdir":
            dirs = existing("dir")
            path = rng.choice(dirs) if dirs else any_path()
            outcomes = twin.both(os.rmdir, path)
            detail = path
        elif op == "link":
            source, target = a_file(), any_path()
            outcomes = twin.both(os.link, source, target)
            detail = f"{source} -> {target}"
        elif op == "symlink":
            target, path = rng.choice(["a", "../b", "/nonexistent", "x" * 100]), any_path()
            outcomes = twin.both(lambda p, target=target: os.symlink(target, p), path)
            detail = f"{path} -> {target}"
        elif op == "fd_open":
            if len(twin.fds) >= 6:
                continue
            path = a_file()
            opened = twin.both(lambda p: os.open(p, os.O_RDWR | os.O_CREAT, 0o644), path)
            outcomes = [(kind, None if kind == "ok" else value) for kind, value in opened]
            if all(kind == "ok" for kind, _ in opened):
                twin.fds.append((opened[0][1], opened[1][1], path))
            else:
                for kind, value in opened:
                    if kind == "ok":
                        os.close(value)
            detail = path
        elif op in ("fd_write", "fd_read", "fd_close", "fsync"):
            if not twin.fds:
                continue
            index = rng.randrange(len(twin.fds))
            fds = twin.fds[index]
            detail = f"fd of {fds[2]}"
            if op == "fd_write":
                offset, data = pick_size(rng), rng.randbytes(rng.randint(0, 300 * KiB))
                outcomes = [("ok", os.pwrite(fd, data, offset)) for fd in fds[:2]]
                detail += f" @{offset} +{len(data)}"
            elif op == "fd_read":
                offset, length = pick_size(rng), pick_size(rng)
                outcomes = [("ok", os.pread(fd, length, offset)) for fd in fds[:2]]
                detail += f" @{offset} {length}"
            elif op == "fsync":
                os.fsync(fds[1])
                outcomes = [("ok", None), ("ok", None)]
            else:
                os.close(fds[0])
                os.close(fds[1])
                twin.fds.pop(index)
                outcomes = [("ok", None), ("ok", None)]
        else:  # listdir
            dirs = [".", *existing("dir")]
            path = rng.choice(dirs)
            outcomes = twin.both(lambda p: sorted(os.listdir(p)), path)
            detail = path
        log.append(f"{step} {op} {detail} -> {outcomes[0][0]}")
        assert outcomes[0] == outcomes[1], (
            f"step {step}: {op} {detail}: local {summary(outcomes[0])} vs mount {summary(outcomes[1])}\n"
            "last operations:\n" + "\n".join(log[-15:]))


def summary(outcome: tuple) -> str:
    kind, value = outcome
    if isinstance(value, bytes):
        return f"{kind} {len(value)} bytes {value[:16]!r}..."
    return f"{kind} {value!r}"


def compare_trees(local: Path, mounted: Path) -> None:
    expected, actual = tree_snapshot(local), tree_snapshot(mounted)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    different = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
    assert not (missing or extra or different), (
        f"missing {missing[:5]}, unexpected {extra[:5]}, different "
        f"{[(p, expected[p][:2], actual[p][:2]) for p in different[:5]]}")


def test_random_operations_match_a_local_directory(module_fs: Filesystem, module_mount: Path, mnt: Path,
                                                   tmp_path: Path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    twin = Twin(local, mnt)
    log: list[str] = []
    rng = random.Random(SEED)
    try:
        run_ops(twin, rng, OPS, log)
    finally:
        for local_fd, mount_fd, _ in twin.fds:
            os.close(local_fd)
            os.close(mount_fd)
    compare_trees(local, mnt)
    module_fs.remount(module_mount, clear_cache=True)
    compare_trees(local, mnt)
    # and a second round on the remounted tree, over data now read from the network
    twin = Twin(local, mnt)
    try:
        run_ops(twin, rng, OPS // 3, log)
    finally:
        for local_fd, mount_fd, _ in twin.fds:
            os.close(local_fd)
            os.close(mount_fd)
    compare_trees(local, mnt)
    module_fs.remount(module_mount, clear_cache=True)
    compare_trees(local, mnt)
