"""Fixtures shared by every test level: a real local network of storage-node processes.

``tests/support`` goes on sys.path so tests can ``from network import LocalNetwork, LyingProxy,
BlackHole`` (it is not a package, so nothing shadows the real ``nodes``).

Three lifetimes of a 7-node network (starting one costs seconds of CPU: seven Python processes
importing numpy):

- ``local_network``: a fresh network for one test, for tests that kill nodes or change them for good.
- ``shared_network``: one network for the whole session, handed to every module that asks for it.
  Tests may stop nodes but start them again (``down(...)``, or a ``finally``); the fixture starts
  whatever a module left stopped. Filesystems and blobs of earlier modules stay on it: a test may
  rely on what it stored itself, never on the network holding nothing else.
- ``module_network``: a fresh network for one module, for modules that look at everything the nodes
  hold (such a module overrides ``shared_network`` with it: tests/fs/test_gc.py).
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


@pytest.fixture(scope="session")
def session_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """The one 7-node network behind ``shared_network``, started when a module first asks for it."""
    with LocalNetwork(tmp_path_factory.mktemp("shared-network")) as network:
        yield network


@pytest.fixture(scope="module")
def shared_network(session_network: LocalNetwork) -> Iterator[LocalNetwork]:
    """The session's 7-node network, every node running at the start of the module and again after it
    (a node that a failed test left stopped is started again, so that the next module finds it up)."""
    session_network.ensure_all_up()
    yield session_network
    session_network.ensure_all_up()


@pytest.fixture(scope="module")
def module_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A fresh 7-node network for one module: for modules whose checks cover everything on the nodes'
    disks (what other modules stored would be in the way)."""
    with LocalNetwork(tmp_path_factory.mktemp("module-network")) as network:
        yield network
