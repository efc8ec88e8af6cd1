"""Fixtures shared by every test level: a real local network of storage-node processes.

``tests/support`` goes on sys.path so tests can ``from network import LocalNetwork, LyingProxy,
BlackHole`` (it is not a package, so nothing shadows the real ``nodes``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

from bytecode import compile_packages
from network import LocalNetwork

compile_packages("walrusfs", "nodes")  # before any test starts a process that imports them


@pytest.fixture
def local_network(tmp_path: Path) -> Iterator[LocalNetwork]:
    """A fresh 7-node network (n=7, f=2) of its own, for tests that stop, kill or restart nodes."""
    with LocalNetwork(tmp_path / "network") as network:
        yield network


@pytest.fixture(scope="module")
def shared_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """One 7-node network for a whole test module. Tests must leave every node running (a test that
    stops one starts it again, in a ``finally``, or calls ``ensure_all_up()``)."""
    with LocalNetwork(tmp_path_factory.mktemp("shared-network")) as network:
        yield network
