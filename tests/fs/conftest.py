"""Fixtures for the mount tests: a real 7-node network on 127.0.0.1 and real FUSE mounts of walrusfs.

The networks are tests/conftest.py's ``shared_network`` (one for the session) and ``local_network`` (one
per test, for tests that stop nodes). ``make_fs`` creates filesystems whose state lives under the
test's tmp dir (WALRUSFS_HOME), and at teardown unmounts whatever is still mounted and stops each
mount daemon by its pid.
``mnt`` is a mounted filesystem (one per module) on the shared network, with an empty working directory per test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fs_harness import Filesystem, mounted
from network import LocalNetwork

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("the mount tests need /dev/fuse and fusermount3", allow_module_level=True)


MakeFs = Callable[..., Filesystem]


def _fs_factory(home: Path) -> tuple[MakeFs, list[Filesystem]]:
    made: list[Filesystem] = []

    def make(network: LocalNetwork, name: str = "testfs", mkfs: bool = True, **kwargs: object) -> Filesystem:
        fs = Filesystem(name, home, network, **kwargs)  # type: ignore[arg-type]
        if mkfs:
            fs.mkfs()
        made.append(fs)
        return fs

    return make, made


def _cleanup(made: list[Filesystem]) -> None:
    for fs in made:
        fs.cleanup()


@pytest.fixture
def make_fs(tmp_path: Path) -> Iterator[MakeFs]:
    make, made = _fs_factory(tmp_path / "home")
    try:
        yield make
    finally:
        _cleanup(made)


@pytest.fixture(scope="module")
def module_fs(shared_network: LocalNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filesystem]:
    make, made = _fs_factory(tmp_path_factory.mktemp("home"))
    try:
        yield make(shared_network)
    finally:
        _cleanup(made)


@pytest.fixture(scope="module")
def module_mount(module_fs: Filesystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # allow_other: tests (POSIX ACLs) act in it as other users, which FUSE refuses without it.
    with mounted(module_fs, tmp_path_factory.mktemp("mnt"), "-o", "allow_other") as mountpoint:
        yield mountpoint


@pytest.fixture
def mnt(module_mount: Path, request: pytest.FixtureRequest) -> Path:
    """An empty directory of its own inside the module's mount."""
    directory = module_mount / request.node.name.replace("/", "_")[:200]
    directory.mkdir()
    return directory
