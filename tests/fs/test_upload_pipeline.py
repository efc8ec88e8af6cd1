"""The upload pipeline on a real mount: staged data leaves for the network on its own."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from fs_harness import mounted, status


def test_a_small_write_is_uploaded_without_fsync_after_the_upload_delay(module_mount, mnt):
    # The uploader was idle (nothing staged) before this write: it must still wake up for a partial
    # blob and upload it after upload_delay (2 s), not wait for a full blob, fsync or unmount.
    deadline = time.monotonic() + 30
    while status(module_mount)["staged_bytes"] and time.monotonic() < deadline:
        time.sleep(0.2)
    (mnt / "small").write_bytes(b"s" * 100_000)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = status(module_mount)
        if current["staged_bytes"] == 0 and current["dirty_bytes"] == 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"still staged after 30 s without fsync: {status(module_mount)}")


def test_content_uploaded_again_after_its_file_was_deleted_is_certified(module_mount, module_fs, mnt):
    """Identical staged blocks pack into an identical blob, with the ID of one this filesystem
    recorded before (now unreferenced): the upload reuses that record instead of failing forever."""
    data = bytes(range(256)) * 5000
    for attempt in range(2):
        with open(mnt / f"copy{attempt}", "wb") as handle:
            handle.write(data)
            os.fsync(handle.fileno())  # EIO if the upload keeps failing
        if attempt == 0:
            os.unlink(mnt / "copy0")
    with module_fs.db() as db:
        assert db.execute("SELECT COUNT(*) FROM blocks WHERE blob IS NULL").fetchone() == (0,)
    assert (mnt / "copy1").read_bytes() == data


def _set(fs, key: str, value: str) -> None:
    settings = fs.state / "fs.toml"
    settings.write_text(re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", settings.read_text()))


@pytest.mark.parametrize("fill", [True, False])
def test_cache_after_upload_decides_whether_uploaded_blobs_fill_the_read_cache(shared_network, make_fs,
                                                                              tmp_path: Path, fill: bool):
    fs = make_fs(shared_network, name=f"fill{int(fill)}")
    if not fill:
        _set(fs, "cache_after_upload", "false")
    with mounted(fs, tmp_path / "mnt") as mp:
        fd = os.open(mp / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"c" * 300_000)
            os.fsync(fd)
        finally:
            os.close(fd)
        current = status(mp)
        assert (current["cache_bytes"] > 0) is fill, current
        assert (mp / "f").read_bytes() == b"c" * 300_000
