"""Data keys added by rotation (``walrusfs rotate-key``): what new blocks of an encrypted filesystem
are sealed with (docs/encryption.md, "Rotating the data key").

Key 0 is derived from the read key (encryption.py) and stays the key of every snapshot. Each
rotation adds a random 32-byte key with the next id; new blocks are sealed with the newest, and a
block names its key in its header, so older blocks keep opening with theirs. The keys live in the
metadata database (``settings``, key ``data_keys``: JSON ``{"id": "hex"}``), so every snapshot
carries them, sealed under key 0: whoever opens the snapshots (fs.key, a read capability) holds
every data key. Format version 1 of that setting: ids are decimal strings, keys 64 hex digits.
"""

from __future__ import annotations

import json
import os

from ..errors import UserError
from .db import Database

SETTING = "data_keys"
KEY_BYTES = 32


def data_keys_in(db: Database) -> dict[int, bytes]:
    """The rotated data keys a filesystem's database holds, by id (none before the first rotation)."""
    raw = db.get_val("SELECT value FROM settings WHERE key=?", (SETTING,))
    if raw is None:
        return {}
    try:
        keys = {int(key_id): bytes.fromhex(key) for key_id, key in json.loads(raw).items()}
    except (ValueError, AttributeError, TypeError) as error:
        raise UserError(f"{db.path}: the {SETTING} setting is damaged ({error}); restore the metadata from a "
                        "snapshot (walrusfs restore --force)") from None
    if any(key_id < 1 or len(key) != KEY_BYTES for key_id, key in keys.items()):
        raise UserError(f"{db.path}: the {SETTING} setting holds a key id below 1 or a key that is not "
                        f"{KEY_BYTES} bytes; restore the metadata from a snapshot (walrusfs restore --force)")
    return keys


def add_data_key(db: Database) -> int:
    """Add a new random data key and return its id; new blocks are sealed with it from the next mount."""
    keys = data_keys_in(db)
    key_id = max(keys, default=0) + 1
    keys[key_id] = os.urandom(KEY_BYTES)
    with db.transaction():
        db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                   (SETTING, json.dumps({str(k): v.hex() for k, v in sorted(keys.items())})))
    db.sync()
    return key_id
