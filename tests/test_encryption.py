"""Client-side encryption (walrusfs/fs/encryption.py): what is sealed, how it is keyed, and that
ciphertext that was tampered with is refused, never returned as data. Pure functions: no processes."""

from __future__ import annotations

import os

import pytest

from walrusfs.fs.blocks import BlockCorruptError, open_block
from walrusfs.fs.encryption import (
    AES_256_GCM,
    NO_ENCRYPTION,
    OVERHEAD,
    PlainContents,
    Purpose,
    SealedContents,
    TamperedError,
    contents_for,
    contents_of,
    read_key_of,
)
from walrusfs.keys import generate_key

FS_KEY = generate_key()
SECRET = b"the quarterly figures nobody outside may read " * 100


def sealed() -> SealedContents:
    return SealedContents(read_key_of(FS_KEY))


def test_a_sealed_block_hides_its_plaintext_and_opens_back() -> None:
    contents = sealed()
    stored = contents.seal(SECRET, Purpose.BLOCK)
    assert b"quarterly" not in bytes(stored)  # a block is sealed into a view: `in` on it would test ints
    assert len(stored) == len(SECRET) + OVERHEAD
    assert stored[:4] == b"WFSE" and stored[4] == 1  # magic and format version
    assert contents.open(stored, Purpose.BLOCK) == SECRET


def test_same_content_same_ciphertext_within_a_filesystem_only() -> None:
    """Keyed convergence: dedup works inside one filesystem, and another filesystem (or anyone
    without the key) gets unrelated ciphertext and digests for the same file."""
    mine, again = sealed(), SealedContents(read_key_of(FS_KEY))
    theirs = SealedContents(read_key_of(generate_key()))
    assert mine.seal(SECRET, Purpose.BLOCK) == again.seal(SECRET, Purpose.BLOCK)
    assert mine.digest(SECRET) == again.digest(SECRET)
    assert theirs.seal(SECRET, Purpose.BLOCK) != mine.seal(SECRET, Purpose.BLOCK)
    assert mine.digest(SECRET) != PlainContents().digest(SECRET)  # not the public blake3 of the file
    assert mine.seal(SECRET + b"!", Purpose.BLOCK)[10:22] != mine.seal(SECRET, Purpose.BLOCK)[10:22]  # nonces


@pytest.mark.parametrize("where", [0, 5, 10, 21, 22, 100, -1])
def test_any_flipped_byte_is_refused(where: int) -> None:
    contents = sealed()
    stored = bytearray(contents.seal(SECRET, Purpose.BLOCK))
    stored[where] ^= 0x01
    with pytest.raises(TamperedError):
        contents.open(bytes(stored), Purpose.BLOCK)


def test_an_object_is_opened_only_as_what_it_was_sealed_as_and_under_its_key() -> None:
    contents = sealed()
    segment = contents.seal(SECRET, Purpose.SEGMENT)
    with pytest.raises(TamperedError, match="expected a sealed block"):
        contents.open(segment, Purpose.BLOCK)
    # Forging the purpose byte breaks the authentication (the header is associated data).
    forged = segment[:5] + bytes([Purpose.BLOCK]) + segment[6:]
    with pytest.raises(TamperedError, match="does not authenticate"):
        contents.open(forged, Purpose.BLOCK)
    other = SealedContents(read_key_of(generate_key()))
    with pytest.raises(TamperedError, match="does not authenticate"):
        other.open(segment, Purpose.SEGMENT)
    with pytest.raises(TamperedError, match="shorter than"):
        contents.open(b"WFSE", Purpose.BLOCK)
    with pytest.raises(TamperedError, match="not sealed"):
        contents.open(SECRET, Purpose.BLOCK)


def test_open_block_refuses_tampering_with_a_block_error_naming_where() -> None:
    contents = sealed()
    digest = contents.digest(SECRET)
    stored = contents.seal(SECRET, Purpose.BLOCK, digest)
    assert open_block(contents, stored, digest, len(stored), "block 7") == SECRET
    tampered = bytes(stored[:-1]) + bytes([stored[-1] ^ 1])
    with pytest.raises(BlockCorruptError, match="block 7: sealed block does not authenticate"):
        open_block(contents, tampered, digest, len(stored), "block 7")
    # Authentic, but another block of the same filesystem: its digest gives it away.
    other = contents.seal(b"another block", Purpose.BLOCK)
    with pytest.raises(BlockCorruptError, match="does not match its hash"):
        open_block(contents, other, digest, len(other), "block 7")
    plain = PlainContents()
    with pytest.raises(BlockCorruptError, match="does not match its hash"):
        open_block(plain, b"x" * 10, plain.digest(b"y" * 10), 10, "block 8")


def test_the_setting_chooses_the_contents_and_unknown_schemes_say_upgrade() -> None:
    assert isinstance(contents_of(NO_ENCRYPTION, FS_KEY), PlainContents)
    assert isinstance(contents_of(AES_256_GCM, FS_KEY), SealedContents)
    with pytest.raises(ValueError, match="needs its read key"):
        contents_for(AES_256_GCM, None)
    with pytest.raises(ValueError, match="upgrade walrusfs"):
        contents_for("rot13-v9", os.urandom(32))


def test_the_read_key_is_derived_not_the_signing_seed() -> None:
    from walrusfs.keys import private_bytes
    read_key = read_key_of(FS_KEY)
    assert len(read_key) == 32 and read_key != private_bytes(FS_KEY)
    assert read_key == read_key_of(FS_KEY)


def test_a_snapshot_of_an_encrypted_filesystem_is_sealed_and_restores(tmp_path) -> None:
    """Segments and manifest are sealed; restoring needs the read key and checks every segment."""
    import sqlite3
    from dataclasses import replace

    import trio

    from walrusfs.fs.snapshot import (
        Manifest,
        SnapshotError,
        manifest_from_blob,
        plan_segments,
        restore_database,
        seal_manifest,
        store_segments,
    )

    db = tmp_path / "live.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE names (name TEXT)")
    conn.executemany("INSERT INTO names VALUES (?)", [(f"secret-plans-{i}.txt",) for i in range(2000)])
    conn.commit()
    conn.close()
    contents = sealed()
    plan = plan_segments(db, None, contents)
    blobs: dict[str, bytes] = {}

    async def store(data: bytes) -> str:
        blobs[f"blob{len(blobs)}"] = data
        return f"blob{len(blobs) - 1}"

    async def read(blob_id: str) -> bytes:
        return blobs[blob_id]

    segments = trio.run(store_segments, plan, store, 1 << 20)
    manifest = Manifest("fs", 1, 0, {"encryption": AES_256_GCM}, plan.db_size, plan.db_hash, segments)
    blobs["manifest"] = seal_manifest(manifest.to_bytes(), contents)
    assert not any(b"secret-plans" in data or b"fs_id" in data for data in blobs.values())

    with pytest.raises(SnapshotError, match="encrypted: reading it needs the filesystem's key"):
        manifest_from_blob(blobs["manifest"], None)
    with pytest.raises(SnapshotError, match="does not authenticate"):
        manifest_from_blob(blobs["manifest"], read_key_of(generate_key()))
    opened = manifest_from_blob(blobs["manifest"], read_key_of(FS_KEY))
    assert opened.encryption == AES_256_GCM
    trio.run(restore_database, opened, read, tmp_path / "restored.db", None, read_key_of(FS_KEY))
    assert (tmp_path / "restored.db").read_bytes() == db.read_bytes()

    first = segments[0]
    damaged = bytearray(blobs[first.blob])
    damaged[first.offset + 30] ^= 0x01
    blobs[first.blob] = bytes(damaged)
    with pytest.raises(SnapshotError, match=r"segment 0 .* does not authenticate"):
        trio.run(restore_database, opened, read, tmp_path / "again.db", None, read_key_of(FS_KEY))
    plain = replace(opened, settings={})  # an old manifest: no encryption setting, segments read as is
    assert plain.encryption == NO_ENCRYPTION
