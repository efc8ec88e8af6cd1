"""The workloads the crash tests kill the mount daemon under, run as a process of their own.

    python crash_writer.py copy DIR SEED      write files of mixed sizes into DIR/d0..d3; print
                                              "closed NAME" once close() returned, "fsynced NAME"
                                              once fsync() returned
    python crash_writer.py rename DIR SEED    run the rename storm of ``rename_ops(SEED)`` on the
                                              tree ``rename_setup`` made; print "synced K" once the
                                              first K renames are done and a directory is fsynced

Both run until they fail (the daemon died under them) or finish. The tests import the same
functions to know what each file must hold and what each rename did.

(Not a package: ``tests/fs`` is on sys.path while its tests run.)
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

MiB = 1 << 20
COPY_SIZES = (0, 1, 4103, 100_000, MiB - 1, MiB, MiB + 1, 2 * MiB + 12_345, 3 * MiB + 7)
COPY_DIRS = 4
RENAME_DIRS = ("a", "b", "c/deep")
RENAME_FILES = 24
RENAME_VICTIMS = 40
RENAME_BATCH = 10


# --- the copy ----------------------------------------------------------------------------------------


def copy_file(seed: int, index: int) -> tuple[str, bytes, bool]:
    """(relative name, content, fsynced?) of the copy's file number ``index``: two of three are fsynced,
    the third only closed."""
    rng = random.Random(seed * 1_000_003 + index)
    size = rng.choice(COPY_SIZES)
    return f"d{index % COPY_DIRS}/f{index}", rng.randbytes(size), index % 3 != 2


def run_copy(root: Path, seed: int) -> None:
    for d in range(COPY_DIRS):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
    for index in range(10_000):
        name, data, sync = copy_file(seed, index)
        fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:  # in pieces, as cp does
                written = os.write(fd, view[:256 * 1024])
                view = view[written:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        print(f"{'fsynced' if sync else 'closed'} {name}", flush=True)


# --- the rename storm --------------------------------------------------------------------------------


def rename_content(ident: str) -> bytes:
    """Self-describing content: which file this is, then bytes only it has."""
    body = random.Random(ident).randbytes(random.Random(ident + "size").randrange(0, 9000))
    return f"{ident}\n".encode() + body


def rename_setup(root: Path) -> dict[str, str]:
    """The starting tree, made before the storm: RENAME_FILES live files and RENAME_VICTIMS files that
    renames will overwrite. Returns path -> identity."""
    tree: dict[str, str] = {}
    for directory in RENAME_DIRS:
        (root / directory).mkdir(parents=True, exist_ok=True)
    for i in range(RENAME_FILES + RENAME_VICTIMS):
        ident = f"live{i}" if i < RENAME_FILES else f"victim{i - RENAME_FILES}"
        path = f"{RENAME_DIRS[i % len(RENAME_DIRS)]}/{ident}"
        (root / path).write_bytes(rename_content(ident))
        tree[path] = ident
    return tree


def rename_ops(seed: int, tree: dict[str, str]) -> Iterator[tuple[str, str]]:
    """An endless, reproducible storm of renames (old path, new path) on ``tree``: within a directory,
    across directories, and over an existing victim file (whose content is then gone)."""
    rng = random.Random(seed)
    tree = dict(tree)
    victims = sorted(p for p, ident in tree.items() if ident.startswith("victim"))
    rng.shuffle(victims)
    for step in range(1_000_000):
        live = sorted(p for p, ident in tree.items() if ident.startswith("live"))
        old = rng.choice(live)
        kind = rng.random()
        if kind < 0.2 and victims:
            new = victims.pop()  # over an existing file
        elif kind < 0.6:
            new = f"{old.rsplit('/', 1)[0]}/n{seed}-{step}"  # within its directory
        else:
            new = f"{rng.choice(RENAME_DIRS)}/n{seed}-{step}"  # across directories
        tree[new] = tree.pop(old)
        yield old, new


def apply_rename(tree: dict[str, str], op: tuple[str, str]) -> None:
    old, new = op
    tree[new] = tree.pop(old)


def run_renames(root: Path, seed: int) -> None:
    start = {str(p.relative_to(root)): p.read_bytes().split(b"\n", 1)[0].decode()
             for p in root.rglob("*") if p.is_file()}
    for done, (old, new) in enumerate(rename_ops(seed, start), start=1):
        os.rename(root / old, root / new)
        if done % RENAME_BATCH == 0:
            directory = os.open(root / new.rsplit("/", 1)[0], os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            print(f"synced {done}", flush=True)


if __name__ == "__main__":
    mode, directory, seed_text = sys.argv[1:4]
    try:
        if mode == "copy":
            run_copy(Path(directory), int(seed_text))
        else:
            run_renames(Path(directory), int(seed_text))
    except OSError as error:  # the daemon was killed under us: expected
        print(f"stopped: {error}", flush=True)
        sys.exit(3)
