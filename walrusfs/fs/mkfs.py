"""``walrusfs mkfs``: create a filesystem's local state for a committee (the network holds nothing of
it until the first mount writes)."""

from __future__ import annotations

import argparse
import shutil

from ..cluster import COMMITTEE_FILE, WRITER_KEY_FILE, bundled_file
from ..errors import UserError
from ..keys import generate_key, load_key, public_bytes, write_key
from ..protocol.committee import Committee
from ..protocol.roots import fs_id_of_key
from .config import AES_256_GCM, NO_ENCRYPTION, FsSettings, resolve_source
from .db import Database
from .namespace import make_root
from .schema import DDL, SCHEMA_VERSION


def blob_term_days(args: argparse.Namespace) -> float:
    days = getattr(args, "blob_term_days", 365.0)
    if not days > 0:
        raise UserError(f"--blob-term-days must be a positive number of days, not {days}")
    return float(days)


def run(args: argparse.Namespace) -> int:
    state = resolve_source(args.name)
    blob_term_days(args)  # checked before anything is made
    committee_path = bundled_file(args.committee, COMMITTEE_FILE)
    key_path = bundled_file(args.writer_key, WRITER_KEY_FILE)
    committee = Committee.load(committee_path)
    try:
        key = load_key(key_path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load writer key {key_path}: {error}") from error
    if not committee.is_writer(public_bytes(key)):
        raise UserError(f"the key {key_path} is not one of the committee's writers: the nodes would "
                        f"refuse its writes. Add its public key to [writers] in {committee_path}.")
    if state.settings_path.exists():
        if not args.force:
            raise UserError(f"{state.root} already holds a filesystem; pass --force to replace it")
        shutil.rmtree(state.root)
    state.root.mkdir(parents=True, exist_ok=True)
    fs_key = generate_key()
    write_key(state.fs_key_path, fs_key)
    settings = FsSettings(
        fs_id=fs_id_of_key(fs_key), committee=str(committee_path), writer_key=str(key_path),
        block_size=args.block_size * 1024, blob_size=args.blob_size << 20, cache_size=args.cache_size << 20,
        fs_key=str(state.fs_key_path), snapshot_interval=args.snapshot_interval,
        encryption=getattr(args, "encryption", AES_256_GCM), blob_term_days=blob_term_days(args))
    db = Database(state.db_path)
    db.conn.executescript(DDL)
    db.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    db.execute("INSERT INTO settings (key, value) VALUES ('fs_id', ?)", (settings.fs_id,))
    make_root(db)
    db.close()
    tmp = state.settings_path.with_suffix(".tmp")
    tmp.write_text(settings.dump())
    tmp.replace(state.settings_path)
    print(f"created filesystem {settings.fs_id} in {state.root} on {committee.n_shards} shards "
          f"(blocks {args.block_size} KiB, blobs {args.blob_size} MiB)")
    print(f"mount it with: mount -t walrusfs {args.name} DIR   (or: walrusfs mount {args.name} DIR)")
    if settings.encryption == NO_ENCRYPTION:
        print("not encrypted: every storage node can read this filesystem's files and names")
    else:
        print(f"encrypted ({settings.encryption}): nodes store only ciphertext; the keys derive from "
              f"{state.fs_key_path}")
    print(f"back up {state.fs_key_path}: with it and the committee file, 'walrusfs mount --key' restores "
          "this filesystem from the network on any machine. Without it the data cannot be read or restored "
          "by anyone: losing it loses the filesystem.")
    return 0
