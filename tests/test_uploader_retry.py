"""The uploader's retries on a mock clock (one layer: a real catalog and staging directory, a fake
blob client that fails as told). A permanent refusal is tried once, then only when asked; a
transient failure is retried with a backoff that keeps growing while it persists."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from walrusfs.client import StoreError
from walrusfs.fs.blocks import BlockStore
from walrusfs.fs.catalog import Catalog
from walrusfs.fs.db import Database
from walrusfs.fs.schema import DDL, SCHEMA_VERSION
from walrusfs.fs.status import format_status
from walrusfs.fs.uploader import Uploader, UploadError


@pytest.fixture(autouse=True)
def no_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read the staged blocks inline: on the mock clock a worker thread would let time jump ahead."""
    async def inline(fn, *args):
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)


class FailingClient:
    def __init__(self, permanent: bool) -> None:
        self.permanent = permanent
        self.attempts: list[float] = []

    async def store(self, data: bytes) -> None:
        self.attempts.append(trio.current_time())
        raise StoreError("node-0: HTTP 403: forbidden: this key is not one of the committee's writers"
                         if self.permanent else "node-0: ConnectError", {}, permanent=self.permanent)


def uploader_for(tmp_path: Path, client: FailingClient) -> Uploader:
    db = Database(tmp_path / "meta.db")
    db.conn.executescript(DDL)
    db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    catalog = Catalog(db)
    blocks = BlockStore(db, tmp_path / "staging", cache=None, catalog=catalog)  # type: ignore[arg-type]
    with db.transaction():
        blocks.stage(b"staged data" * 100)
    return Uploader(catalog, blocks, None, client, blob_size=1 << 20, upload_delay=2.0,  # type: ignore[arg-type]
                    fill_cache=False)


def run_for(tmp_path: Path, client: FailingClient, seconds: float, then=None) -> Uploader:
    async def main() -> None:
        uploader = uploader_for(tmp_path, client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uploader.run)
            await trio.sleep(seconds)
            if then is not None:
                await then(uploader)
            nursery.cancel_scope.cancel()
        holder.append(uploader)

    holder: list[Uploader] = []
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return holder[0]


def test_a_permanent_refusal_is_tried_once_and_then_only_when_asked(tmp_path: Path) -> None:
    client = FailingClient(permanent=True)

    async def fsync(uploader: Uploader) -> None:
        with pytest.raises(UploadError, match="not one of the committee's writers"):
            await uploader.wait_certified()
        await trio.sleep(600)

    uploader = run_for(tmp_path, client, 3600, fsync)
    # After the upload delay, then once for the fsync at 3600 s; never again in the 600 s after it.
    assert [round(t) for t in client.attempts] == [2, 3600]
    assert "not one of the committee's writers" in (uploader.stats.permanent_error or "")
    assert uploader.catalog.staged_bytes == 1100  # kept staged


def test_a_transient_failure_backs_off_further_while_it_persists(tmp_path: Path) -> None:
    client = FailingClient(permanent=False)
    uploader = run_for(tmp_path, client, 3600)
    gaps = [b - a for a, b in zip(client.attempts, client.attempts[1:], strict=False)]
    # Full jitter up to 60 s: about one try every 30 s once at the cap (the old uploader: every 1-2 s).
    assert 40 < len(client.attempts) < 250, len(client.attempts)
    assert max(gaps) > 30 and uploader.stats.permanent_error is None


def test_walrusfs_status_shows_a_permanent_failure_with_what_the_nodes_said() -> None:
    said = "node-0: HTTP 403: forbidden: this key is not one of the committee's writers"
    status = {"mountpoint": "/mnt/x", "state": "/state", "staged_bytes": 1100, "upload_failures": 1,
              "last_error": said, "upload_permanent_error": said, "last_error_at": 1.0}
    shown = format_status(status)
    assert "UPLOADS STOPPED, PERMANENT FAILURE" in shown and said in " ".join(shown.split())
    assert "UPLOADS FAILING" not in shown


def test_a_pack_that_no_further_block_fits_is_uploaded_while_small_writes_go_on(tmp_path: Path) -> None:
    """Steady small writes keep moving the upload_delay clock; a pack as full as blocks allow (they
    stop just short of the blob size) must not wait for them to pause."""
    client = FailingClient(permanent=False)

    async def main() -> None:
        uploader = uploader_for(tmp_path, client)  # one 1100-byte block staged
        uploader.blob_size = 2000  # two blocks never fit: one block is a full pack
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uploader.run)
            for i in range(20):  # a new block every 0.5 s for 10 s: the delay (2 s) never passes
                await trio.sleep(0.5)
                with uploader.catalog.db.transaction():
                    uploader.blocks.stage(bytes([i]) * 1100)
                uploader.notify_staged()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert client.attempts and client.attempts[0] <= 1.0, client.attempts


class StoringClient:
    """Stores everything: a certified blob named after its length."""

    async def store(self, data: bytes) -> SimpleNamespace:
        return SimpleNamespace(blob_id=f"blob-{len(data)}", certificate=SimpleNamespace(to_json=lambda: "{}"))


class FullCache:
    async def fill(self, blob_id: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_certified_blob_whose_cache_copy_fails_is_an_upload_that_succeeded(tmp_path: Path) -> None:
    """The copy into the read cache comes after the blob is certified and recorded: failing it (a full
    cache disk) loses no data, so it is not counted, shown or retried as an upload failure."""
    async def main() -> None:
        uploader = uploader_for(tmp_path, StoringClient())  # type: ignore[arg-type]
        uploader.cache, uploader.fill_cache = FullCache(), True  # type: ignore[assignment]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(uploader.run)
            await uploader.wait_certified()  # returns: nothing staged is left uncertified
            nursery.cancel_scope.cancel()
        holder.append(uploader)

    holder: list[Uploader] = []
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    stats = holder[0].stats
    assert (stats.blobs, stats.failures, stats.last_error) == (1, 0, None)
    assert holder[0].catalog.count_staged() == 0
