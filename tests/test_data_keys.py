"""Rotated data keys (walrusfs/fs/data_keys.py, encryption.py): blocks are sealed with the newest key,
snapshots with key 0, and each sealed object opens with the key its header names."""

from __future__ import annotations

from pathlib import Path

import pytest

from walrusfs.errors import UserError
from walrusfs.fs.data_keys import add_data_key, data_keys_in
from walrusfs.fs.db import Database
from walrusfs.fs.encryption import Purpose, SealedContents, TamperedError, read_key_of
from walrusfs.fs.schema import DDL
from walrusfs.keys import generate_key

READ_KEY = read_key_of(generate_key())


def key_id(stored: bytes | bytearray) -> int:
    return int.from_bytes(stored[6:10], "little")


def test_blocks_use_the_newest_key_snapshots_key_0_and_old_blocks_still_open(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.conn.executescript(DDL)
    before = SealedContents(READ_KEY, data_keys_in(db))
    old_block = before.seal(b"written before rotation", Purpose.BLOCK)
    assert key_id(old_block) == 0

    assert add_data_key(db) == 1 and add_data_key(db) == 2
    after = SealedContents(READ_KEY, data_keys_in(db))
    new_block = after.seal(b"written after rotation", Purpose.BLOCK)
    assert key_id(new_block) == 2
    assert key_id(after.seal(b"a metadata segment", Purpose.SEGMENT)) == 0  # opens with the read key alone
    assert after.open(old_block, Purpose.BLOCK) == b"written before rotation"
    assert after.open(new_block, Purpose.BLOCK) == b"written after rotation"
    with pytest.raises(TamperedError, match="data key 2, which this mount does not hold"):
        before.open(new_block, Purpose.BLOCK)
    db.close()


def test_a_damaged_key_setting_is_refused_with_what_to_do(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    db.conn.executescript(DDL)
    db.execute("INSERT INTO settings (key, value) VALUES ('data_keys', ?)", ('{"1": "abcd"}',))
    with pytest.raises(UserError, match="restore the metadata from a snapshot"):
        data_keys_in(db)
    db.close()
