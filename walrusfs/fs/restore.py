"""Rebuilding a filesystem's local state from the network: only the committee and the filesystem's
key are needed. The root record names the latest snapshot; older ones are listed in its manifest."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import BlobClient
from ..client.roots import RootQuorumError, find_root
from ..durable import replace_durably
from ..errors import UserError
from ..keys import write_key
from ..progress import Progress
from ..protocol.committee import Committee
from ..protocol.roots import fs_id_of_key
from ..redstuff import BlobId
from .capability import ReadCapability
from .catalog import resolve_staged as resolve_staged_blocks
from .chain import fs_chain, save_chain
from .config import FsSettings, FsState
from .data_keys import data_keys_in
from .db import Database
from .encryption import contents_for, read_key_of
from .fsck import Fsck, FsckReport
from .publisher import LocalSnapshotState
from .set_aside import compare, set_aside
from .snapshot import Manifest, SnapshotError, SnapshotRef, manifest_from_blob, restore_database


@dataclass
class SnapshotChain:
    """The latest snapshot (from the root record) and the earlier ones it keeps listed."""

    latest: Manifest
    latest_id: str
    history: list[SnapshotRef]
    generation: int = 0  # the writer lease the latest was published under (its root record's)
    holder: str = ""

    @property
    def all(self) -> list[SnapshotRef]:
        return [*self.history, SnapshotRef(self.latest.seq, self.latest.created_ns, self.latest_id)]


async def read_manifest(client: BlobClient, blob_id: str, fs_id: str, read_key: bytes | None) -> Manifest:
    """A manifest from the network (opened with ``read_key`` if its filesystem is encrypted)."""
    try:
        manifest = manifest_from_blob(await client.read(BlobId.parse(blob_id)), read_key)
    except SnapshotError as error:
        raise UserError(f"snapshot manifest {blob_id}: {error}") from None
    if manifest.fs_id != fs_id:
        raise UserError(f"snapshot manifest {blob_id} belongs to filesystem {manifest.fs_id}, not {fs_id}")
    return manifest


async def find_chain(client: BlobClient, key: Ed25519PrivateKey) -> SnapshotChain:
    """The snapshots of the filesystem that ``key`` owns."""
    return await find_chain_of(client, fs_id_of_key(key), read_key_of(key))


async def find_chain_of(client: BlobClient, fs_id: str, read_key: bytes | None) -> SnapshotChain:
    """The snapshots of filesystem ``fs_id`` (``read_key``: to open an encrypted one's manifests;
    the holder of a read capability has it, not the filesystem's key)."""
    try:
        root = await find_root(client.connections, client.committee, fs_id)
    except RootQuorumError as error:
        raise UserError(str(error)) from None
    if root is None:
        raise UserError(f"the nodes hold no snapshot of filesystem {fs_id}: it was never unmounted or "
                        "snapshotted with this committee, or this is not its key")
    manifest = await read_manifest(client, str(root.snapshot), fs_id, read_key)
    if manifest.seq != root.seq:
        raise UserError(f"root record {root.seq} points at a manifest of snapshot {manifest.seq}")
    return SnapshotChain(manifest, str(root.snapshot), manifest.history, root.generation, root.holder)


async def manifest_of(client: BlobClient, key: Ed25519PrivateKey, chain: SnapshotChain,
                      seq: int | None) -> tuple[Manifest, str]:
    return await manifest_in(client, fs_id_of_key(key), read_key_of(key), chain, seq)


async def manifest_in(client: BlobClient, fs_id: str, read_key: bytes | None, chain: SnapshotChain,
                      seq: int | None) -> tuple[Manifest, str]:
    """Snapshot ``seq`` of the chain (None: the latest) and its manifest's blob ID."""
    if seq is None or seq == chain.latest.seq:
        return chain.latest, chain.latest_id
    for ref in chain.history:
        if ref.seq == seq:
            manifest = await read_manifest(client, ref.manifest, fs_id, read_key)
            if manifest.seq != seq:
                raise UserError(f"manifest {ref.manifest} is snapshot {manifest.seq}, listed as {seq}")
            return manifest, ref.manifest
    kept = ", ".join(str(r.seq) for r in chain.all)
    raise UserError(f"snapshot {seq} is not kept (kept: {kept}); see 'walrusfs snapshots'")


def resolve_staged(db_path: Path, reference: Path) -> tuple[int, int]:
    """Blocks a snapshot recorded as staged (written, not yet certified, when it was taken) are
    content-addressed: where ``reference`` (the live database) has the same block in a certified
    blob by now, point the snapshot's block at that blob. Returns (resolved, still staged)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS ref", (f"file:{reference}?mode=ro",))
        conn.execute("BEGIN")
        resolved, left = resolve_staged_blocks(conn, "ref")
        conn.execute("COMMIT")
        return resolved, left
    finally:
        conn.close()


async def restore_db_file(client: BlobClient, manifest: Manifest, dest: Path, quiet: bool = False,
                          read_key: bytes | None = None) -> None:
    """The manifest's database at ``dest`` (``read_key``: needed if its filesystem is encrypted)."""
    async def read_blob(blob_id: str) -> bytes:
        return await client.read(BlobId.parse(blob_id))

    progress = None if quiet else Progress("restoring metadata", manifest.db_size)
    try:
        await restore_database(manifest, read_blob, dest, None if progress is None else progress.update, read_key)
    except SnapshotError as error:
        raise UserError(str(error)) from None
    finally:
        if progress is not None:
            progress.close()


async def restore_state(state: FsState, committee_path: Path, committee: Committee, writer_key_path: Path,
                        writer_key: Ed25519PrivateKey, fs_key: Ed25519PrivateKey, *, force: bool = False,
                        quiet: bool = False) -> FsckReport:
    """Create ``state`` from the latest snapshot on the network, then repair it with fsck (blocks
    that were staged, never certified, when the snapshot was taken are reported as lost). With
    ``force``, existing local state is set aside (set_aside.py), never deleted, and what it held
    that the snapshot lacks is listed."""
    if state.settings_path.exists() and not force:
        raise UserError(f"{state.root} already holds a filesystem; restoring would replace its local state "
                        "(pass --force to do that: the old state is set aside, not deleted)")
    started = time.monotonic()
    aside = None
    async with BlobClient(fs_chain(state, committee, committee_path), writer_key=writer_key) as client:
        # From the committee file the user kept (maybe years old) to the committee of now.
        await client.refresh_chain("restore")
        chain = await find_chain(client, fs_key)
        manifest = chain.latest
        if state.settings_path.exists():
            aside = set_aside(state)
        elif state.root.exists():
            shutil.rmtree(state.root)  # a restore cut short: nothing of a filesystem in it yet
        state.root.mkdir(parents=True)
        state.staging.mkdir()
        write_key(state.fs_key_path, fs_key)
        await restore_db_file(client, manifest, state.db_path, quiet, read_key_of(fs_key))
        committees = client.chain
    save_chain(state, committees)
    replace_durably(state.snapshot_manifest, manifest.to_bytes())
    settings = FsSettings(**{**manifest.settings, "committee": str(committee_path),
                             "writer_key": str(writer_key_path), "fs_key": str(state.fs_key_path)})
    db = Database(state.db_path)
    try:
        report = Fsck(db, state, settings, committees).run_local()
    finally:
        db.close()
    # Up to date with the snapshot unless fsck had to change something.
    LocalSnapshotState(manifest.seq, manifest.created_ns, chain.latest_id, manifest.seq, not report.findings,
                       chain.generation, chain.holder, chain.generation).save(state)
    replace_durably(state.settings_path, settings.dump().encode())  # last: the state is complete
    if not quiet:
        print(f"restored filesystem {settings.fs_id} from snapshot {manifest.seq} "
              f"({manifest.db_size / 2**20:.1f} MiB of metadata) in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
    if aside is not None:  # last, so that it is what the user reads
        print(compare(aside, state.db_path).warning(state.root.name), file=sys.stderr)
    return report


async def refresh_shared_state(state: FsState, committee_path: Path, committee: Committee, capability: ReadCapability,
                               *, quiet: bool = False) -> int:
    """The local state of a read capability (capability.py) at the snapshot it names, or the latest
    one: restored from the network the first time, and again whenever the network holds a newer
    snapshot than the one on disk (each read-only mount of the latest sees the latest). No key of
    the filesystem is stored: only the capability (``read.cap``, mode 0600). Returns the snapshot."""
    local = LocalSnapshotState.load(state) if state.settings_path.exists() else None
    async with BlobClient(fs_chain(state, committee, committee_path)) as client:
        await client.refresh_chain("mount")
        chain = await find_chain_of(client, capability.fs_id, capability.read_key)
        manifest, manifest_id = await manifest_in(client, capability.fs_id, capability.read_key, chain,
                                                  capability.snapshot)
        if local is not None and local.seq == manifest.seq:
            return manifest.seq
        state.root.mkdir(parents=True, exist_ok=True)
        state.staging.mkdir(exist_ok=True)
        replace_durably(state.root / "read.cap", capability.to_text().encode(), mode=0o600)
        await restore_db_file(client, manifest, state.db_path, quiet, capability.read_key)
        committees = client.chain
    save_chain(state, committees)
    replace_durably(state.snapshot_manifest, manifest.to_bytes())
    settings = FsSettings(**{**manifest.settings, "committee": str(committee_path), "writer_key": "", "fs_key": ""})
    db = Database(state.db_path)
    try:
        contents = contents_for(settings.encryption, capability.read_key, data_keys_in(db))
        report = Fsck(db, state, settings, committees, contents=contents).run_local()
    finally:
        db.close()
    for finding in report.findings:  # staged, never certified when the snapshot was taken: holes
        print(f"snapshot {manifest.seq}: {finding.message}", file=sys.stderr)
    LocalSnapshotState(manifest.seq, manifest.created_ns, manifest_id, manifest.seq, True).save(state)
    replace_durably(state.settings_path, settings.dump().encode())
    if not quiet:
        print(f"read capability: filesystem {capability.fs_id}, snapshot {manifest.seq} "
              f"({manifest.db_size / 2**20:.1f} MiB of metadata)", file=sys.stderr)
    return manifest.seq
