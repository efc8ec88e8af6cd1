"""Deterministic source trees for the copy tests, and a strict comparison of two trees.

(Not a package: ``tests/fs`` is on sys.path while its tests run.)
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path

ODD_NAMES = ["with space", "tab\there", "new\nline", "ünïcödé-名前-🦭", "-leading-dash", ".hidden",
             "back\\slash", "quo'te\"s", "*?[glob]{x}", "n" * 255, "trailing space ", "%percent%",
             os.fsdecode(b"latin1-caf\xe9")]


def make_source_tree(root: Path, seed: int = 0, small: int = 1750, medium: int = 230, large: int = 20) -> int:
    """~2,000 files of 0 B..3 MiB (~130 MiB in all) in nested directories, with hard links, symlinks,
    xattrs, odd names, assorted modes and times, a fifo and an empty directory. Returns total bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    directories = [root]
    for i in range(60):
        parent = rng.choice(directories)
        name = ODD_NAMES[i] if i < len(ODD_NAMES) - 1 else f"dir{i}"
        directory = parent / name
        directory.mkdir(exist_ok=True)
        directories.append(directory)
    (root / "empty dir").mkdir()
    sizes = ([0] * 40 + [rng.randint(1, 32 << 10) for _ in range(small - 40)]
             + [rng.randint(32 << 10, 1 << 20) for _ in range(medium)]
             + [rng.randint(1 << 20, 3 << 20) for _ in range(large)])
    rng.shuffle(sizes)
    total = 0
    files = []
    for i, size in enumerate(sizes):
        directory = rng.choice(directories)
        name = f"{ODD_NAMES[i % len(ODD_NAMES)][:240]}.{i}" if i % 97 == 0 else f"file-{i}.bin"
        path = directory / name
        path.write_bytes(rng.randbytes(size))
        total += size
        files.append(path)
        if i % 50 == 0:
            os.setxattr(path, "user.walrus.note", f"file {i}".encode())
        if i % 211 == 0:
            os.setxattr(path, "user.binary", rng.randbytes(300))
            os.setxattr(path, "trusted.root-only", b"t")
        os.chmod(path, rng.choice([0o644, 0o600, 0o755, 0o444, 0o640, 0o4755]))
        if i % 13 == 0:
            os.chown(path, rng.randint(1000, 60000), rng.randint(1000, 60000))
        stamp = rng.randint(0, 2_000_000_000) * 10**9 + rng.randint(0, 999_999_999)
        os.utime(path, ns=(stamp, stamp))
    for i in range(40):  # hard links, some across directories, some with 3+ names
        target = rng.choice(files)
        link = rng.choice(directories) / f"hardlink-{i}"
        if not link.exists():
            os.link(target, link)
    for i in range(40):
        link = rng.choice(directories) / f"symlink-{i}"
        target = os.path.relpath(rng.choice(files + directories), link.parent) if i % 5 else f"dangling/{i}"
        os.symlink(target, link)
        os.utime(link, ns=(10**18, 10**18), follow_symlinks=False)
    os.setxattr(directories[3], "user.on-a-dir", b"dir xattr")
    os.mkfifo(root / "a fifo")
    for directory in reversed(directories):
        os.utime(directory, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9 + 123))
    return total


def describe_tree(root: Path, content: bool = True) -> dict[str, dict]:
    """Everything ``rsync -aHAX`` promises to keep, for each path under ``root`` (hard links as
    groups of names sharing an inode)."""
    out: dict[str, dict] = {}
    inode_names: dict[int, list[str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
            st = path.lstat()
            entry: dict = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
                           "xattrs": {k: os.getxattr(path, k, follow_symlinks=False)
                                      for k in sorted(os.listxattr(path, follow_symlinks=False))}}
            if stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            else:
                entry["mtime_ns"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                entry["size"] = st.st_size
                entry["nlink"] = st.st_nlink
                if content:
                    entry["blake2b"] = hashlib.blake2b(path.read_bytes()).hexdigest()
                inode_names.setdefault(st.st_ino, []).append(rel)
            out[rel] = entry
    for names in inode_names.values():
        for name in names:
            out[name]["same_file_as"] = sorted(names)
    return out


def diff_trees(expected: dict[str, dict], actual: dict[str, dict], limit: int = 5) -> list[str]:
    problems = [f"missing: {p!r}" for p in sorted(set(expected) - set(actual))]
    problems += [f"unexpected: {p!r}" for p in sorted(set(actual) - set(expected))]
    for path in sorted(set(expected) & set(actual)):
        for key in sorted(set(expected[path]) | set(actual[path])):
            if expected[path].get(key) != actual[path].get(key):
                problems.append(f"{path!r}: {key} {expected[path].get(key)!r} != {actual[path].get(key)!r}")
    return problems[:limit] + ([f"... {len(problems) - limit} more"] if len(problems) > limit else [])


def file_digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes()).hexdigest()
