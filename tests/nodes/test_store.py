"""The on-disk store on its own: atomic writes, checksums, a full disk."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import httpx
import pytest

from nodes import store as store_module
from nodes.app import NodeApp
from nodes.config import NodeConfig
from nodes.store import BlobStore, CorruptObjectError, StoreFullError, sliver_name
from walrusfs.cluster import init_cluster
from walrusfs.keys import load_key
from walrusfs.protocol import sign_request
from walrusfs.redstuff import BlobId, SliverKind, encode

BLOB = BlobId(bytes(range(32)))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    opened = BlobStore(tmp_path / "data")
    opened.open()
    return opened


def test_objects_round_trip_and_are_counted(store: BlobStore) -> None:
    assert store.put_metadata(BLOB, b"meta")
    assert not store.put_metadata(BLOB, b"meta")
    store.put_sliver(BLOB, 3, SliverKind.PRIMARY, b"x" * 1000)
    assert store.get(BLOB, sliver_name(3, SliverKind.PRIMARY)) == b"x" * 1000
    assert store.get(BLOB, sliver_name(3, SliverKind.SECONDARY)) is None
    assert store.stats.blobs == 1
    assert store.stats.bytes == 2 * store_module.HEADER_SIZE + 4 + 1000
    assert store.list_blobs(None, 10) == [str(BLOB)]


def write_fails_with(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def failing_writev(fd: int, buffers: list) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.os, "writev", failing_writev)


def test_a_full_disk_changes_nothing_and_leaves_no_temp_file(store: BlobStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_metadata(BLOB, b"meta")
    store.put_sliver(BLOB, 0, SliverKind.PRIMARY, b"old")
    write_fails_with(monkeypatch, errno.ENOSPC)
    with pytest.raises(StoreFullError):
        store.put_sliver(BLOB, 0, SliverKind.PRIMARY, b"new")
    with pytest.raises(StoreFullError):
        store.put_sliver(BLOB, 1, SliverKind.PRIMARY, b"new")
    monkeypatch.undo()
    assert store.get(BLOB, sliver_name(0, SliverKind.PRIMARY)) == b"old"
    assert store.get(BLOB, sliver_name(1, SliverKind.PRIMARY)) is None
    assert sorted(os.listdir(store.blob_dir(BLOB))) == ["metadata", "p0.primary"]


def test_leftover_temp_files_of_an_interrupted_write_are_removed_on_open(store: BlobStore) -> None:
    store.put_metadata(BLOB, b"meta")
    (store.blob_dir(BLOB) / ".p0.primary.abc.tmp").write_bytes(b"half a sli")
    reopened = BlobStore(store.root)
    reopened.open()
    assert os.listdir(store.blob_dir(BLOB)) == ["metadata"]
    assert reopened.stats.blobs == 1


def test_a_corrupt_file_is_quarantined_and_remembered(store: BlobStore) -> None:
    store.put_metadata(BLOB, b"meta")
    store.put_sliver(BLOB, 2, SliverKind.SECONDARY, b"y" * 100)
    path = store.blob_dir(BLOB) / sliver_name(2, SliverKind.SECONDARY)
    path.write_bytes(path.read_bytes()[:-1] + b"z")
    with pytest.raises(CorruptObjectError):
        store.get(BLOB, sliver_name(2, SliverKind.SECONDARY))
    assert store.object_state(BLOB, sliver_name(2, SliverKind.SECONDARY)) == "quarantined"
    reopened = BlobStore(store.root)
    reopened.open()  # the quarantine survives a restart
    assert reopened.object_state(BLOB, sliver_name(2, SliverKind.SECONDARY)) == "quarantined"
    assert reopened.stats.quarantined == 1


def test_a_full_disk_is_answered_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_cluster(tmp_path, nodes=1, shards=4, base_port=40000)
    config = NodeConfig.load(tmp_path / "node-0" / "config.toml")
    committee, key = config.load_identity()
    store = BlobStore(config.data_dir)
    store.open()
    app = NodeApp(config, committee, key, store)
    writer = load_key(tmp_path / "writer.key")
    blob = encode(b"some data", 4)
    write_fails_with(monkeypatch, errno.ENOSPC)

    async def put_metadata() -> httpx.Response:
        path = f"/v1/blobs/{blob.blob_id}/metadata"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as http:
            return await http.put(path, content=blob.metadata.to_bytes(),
                                  headers={"Authorization": sign_request(writer, "PUT", path, committee.node("node-0"),
                                                                       blob.metadata.to_bytes())})

    response = asyncio.run(put_metadata())
    assert response.status_code == 507 and response.json()["error"] == "disk_full"
    assert store.get(blob.blob_id, "metadata") is None
    app.executor.shutdown()
