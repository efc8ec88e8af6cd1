"""The upload pipeline on a real mount: staged data leaves for the network on its own."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from fs_harness import WALRUSFS, mounted, status

from walrusfs.keys import generate_key, write_key


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


def test_nodes_refusing_the_writer_is_a_permanent_failure_reported_and_not_retried(shared_network, make_fs,
                                                                                    tmp_path: Path):
    """Every node answers 403 (the key is not one of the committee's writers): retrying cannot help.
    The uploader stops instead of retrying every few seconds forever, `walrusfs status` says it is
    permanent with the node's message, the data stays staged, and an fsync tries once more (EIO)."""
    fs = make_fs(shared_network, name="refused")
    stranger = tmp_path / "stranger.key"
    write_key(stranger, generate_key())
    _set(fs, "writer_key", f'"{stranger}"')
    with mounted(fs, tmp_path / "mnt") as mp:
        (mp / "small").write_bytes(b"r" * 100_000)
        deadline = time.monotonic() + 60
        while not status(mp).get("upload_failures") and time.monotonic() < deadline:
            time.sleep(0.2)
        first = status(mp)
        assert first["upload_failures"] == 1, first
        time.sleep(8)  # the old uploader retried about every second, forever
        later = status(mp)
        assert later["upload_failures"] == 1, f"a permanent refusal was retried: {later}"
        assert later["staged_bytes"] == 100_000
        assert "not one of the committee's writers" in later["upload_permanent_error"]
        shown = subprocess.run([WALRUSFS, "status", str(mp)], env=fs.env, capture_output=True, text=True,
                               timeout=60)
        assert shown.returncode == 2, shown.stdout + shown.stderr
        assert "PERMANENT FAILURE" in shown.stdout and "not one of the committee's writers" in shown.stdout
        fd = os.open(mp / "small", os.O_RDONLY)
        try:
            with pytest.raises(OSError) as raised:
                os.fsync(fd)  # asked explicitly: one more attempt, which fails the same way
            assert raised.value.errno == errno.EIO
        finally:
            os.close(fd)
        assert status(mp)["upload_failures"] == 2
        assert (mp / "small").read_bytes() == b"r" * 100_000
        refused = subprocess.run([WALRUSFS, "umount", str(mp)], env=fs.env, capture_output=True, text=True,
                                 timeout=120)
        assert refused.returncode == 1 and "the nodes refuse the staged data" in refused.stderr, refused.stderr
        assert status(mp)["upload_failures"] == 3  # the umount asked for one more attempt
        fs.plain_umount(mp)  # keeps it staged for the next mount


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
