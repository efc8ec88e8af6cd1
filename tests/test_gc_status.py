"""``walrusfs status`` shows what a filesystem occupies on the network, and what gc did (docs/gc.md)."""

from __future__ import annotations

from walrusfs.fs.status import format_status

BASE = {"pid": 1, "fs_id": "f" * 32, "state": "/s", "read_only": False}


def test_status_shows_bytes_on_the_network_after_encoding_next_to_the_logical_bytes() -> None:
    shown = format_status({**BASE, "space": {"logical_bytes": 3 << 20, "blob_bytes": 4 << 20,
                                             "network_bytes": 20 << 20, "blobs": 2}})
    line = next(line for line in shown.splitlines() if line.startswith("space"))
    assert "20.0 MiB on the nodes after encoding" in line and "4.0 MiB in 2 blobs" in line and "3.0 MiB" in line


def test_status_shows_the_last_gc_pass_and_what_is_still_waiting_for_a_node() -> None:
    shown = format_status({**BASE, "gc": {"last": {"released_bytes": 5 << 20, "referenced_bytes": 7 << 20,
                                                   "pending_blobs": 2}}})
    line = next(line for line in shown.splitlines() if line.startswith("gc"))
    assert "released 5.0 MiB" in line and "7.0 MiB referenced" in line and "2 blobs not yet released" in line
    running = format_status({**BASE, "gc": {"last": None, "running": {"step": "releasing", "done": 3, "total": 9}}})
    assert "running: releasing 3/9" in running


def test_a_daemon_without_gc_shows_neither() -> None:
    shown = format_status(BASE)
    assert not any(line.startswith(("space", "gc")) for line in shown.splitlines())
