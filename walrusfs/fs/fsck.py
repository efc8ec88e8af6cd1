"""fsck: one check per invariant of schema.py, plus the staging directory and the snapshots.

Each check finds what breaks its invariant, repairs what it safely can, and reports the rest. The
crash states they cover (kill -9 of the mount daemon, power loss, a restore from an older
snapshot) are listed in docs/crash-safety.md. The order matters: later checks recount what earlier
ones removed.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..keys import load_key
from ..protocol.certificates import Certificate, CertificateError
from ..protocol.chain import ChainError, CommitteeChain
from ..protocol.committee import Committee
from ..redstuff import FormatError
from .acl import ACCESS, DEFAULT, Acl, AclError
from .blocks import BlockCorruptError, open_block
from .catalog import Catalog
from .config import FsSettings, FsState
from .data_keys import data_keys_in
from .db import Database
from .encryption import NO_ENCRYPTION, Contents, contents_of
from .publisher import LocalSnapshotState
from .snapshot import SnapshotError

log = logging.getLogger(__name__)

ROOT = 1  # pyfuse3.ROOT_INODE, without importing FUSE for an offline check


@dataclass
class Finding:
    check: str
    message: str
    repaired: bool


@dataclass
class FsckReport:
    findings: list[Finding] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> list[Finding]:
        return [f for f in self.findings if f.repaired]

    @property
    def unrepaired(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    @property
    def exit_code(self) -> int:
        """As fsck(8): 0 clean, 1 errors corrected, 4 errors left uncorrected."""
        if self.unrepaired:
            return 4
        return 1 if self.findings else 0

    def to_dict(self) -> dict:
        return {"checks": self.checks, "clean": not self.findings, "exit_code": self.exit_code,
                "findings": [f.__dict__ for f in self.findings]}


class Fsck:
    def __init__(self, db: Database, state: FsState, settings: FsSettings,
                 committee: Committee | CommitteeChain | None,
                 repair: bool = True, report: FsckReport | None = None, contents: Contents | None = None) -> None:
        """``committee``: the chain (or one committee) certificates are checked against; ``contents``:
        how the filesystem seals its blocks; by default from its settings and, if it is encrypted, its
        key file (checking staged blocks of an encrypted filesystem needs the key)."""
        self.db = db
        if contents is None:
            fs_key = None
            if settings.encryption != NO_ENCRYPTION:
                fs_key = load_key(Path(settings.fs_key or state.fs_key_path))
            contents = contents_of(settings.encryption, fs_key, data_keys_in(db))
        self.contents = contents
        self.catalog = Catalog(db)
        self.state = state
        self.settings = settings
        self.committee = committee
        self.repair = repair
        self.report = report or FsckReport()
        self._snapshot_stale = False

    def _mark_snapshot_stale(self) -> None:
        """The published snapshot holds the metadata as it was before this repair: the next
        unmount must publish a new one even if nothing else changes."""
        self._snapshot_stale = True
        try:
            local = LocalSnapshotState.load(self.state)
        except SnapshotError:
            return  # reported by the snapshot check; the next snapshot rewrites it
        if local.up_to_date:
            local.up_to_date = False
            local.save(self.state)

    # --- reporting ---------------------------------------------------------------------------------

    def found(self, check: str, message: str, repaired: bool) -> None:
        repaired = repaired and self.repair
        self.report.findings.append(Finding(check, message, repaired))
        if repaired and not self._snapshot_stale:
            self._mark_snapshot_stale()
        log.log(logging.WARNING if repaired else logging.ERROR, "fsck %s: %s%s", check, message,
                " (repaired)" if repaired else "")

    def path_of(self, inode: int) -> str:
        """A path naming ``inode`` (any one of its hard links), for reports."""
        parts: list[str] = []
        seen = set()
        while inode != ROOT and inode not in seen:
            seen.add(inode)
            row = self.db.get_row("SELECT parent, name FROM dirents WHERE inode=? LIMIT 1", (inode,))
            if row is None:
                return f"<unnamed inode {inode}>/" + "/".join(reversed(parts))
            inode = row[0]
            parts.append(bytes(row[1]).decode(errors="replace"))
        return "/" + "/".join(reversed(parts))

    # --- the local checks --------------------------------------------------------------------------

    def run_local(self) -> FsckReport:
        checks: list[tuple[str, Callable[[], None]]] = [
            ("I2 directory entries", self.check_dirents),
            ("I1 inode link counts", self.check_inode_refcounts),
            ("I1 unreferenced inodes", self.check_orphan_inodes),
            ("side tables", self.check_side_tables),
            ("I10 directory link counts", self.check_subdir_counts),
            ("I11 ACLs", self.check_acls),
            ("I7 blocks past end of file", self.check_past_eof),
            ("I5 blocks in known blobs", self.check_block_blobs),
            ("I4 staged blocks", self.check_staged_blocks),
            ("I3 block reference counts", self.check_block_refcounts),
            ("I4 staging directory", self.check_staging_orphans),
            ("I6 blob reference counts", self.check_blob_refcounts),
            ("I12 snapshot records", self.check_snapshot_records),
            ("I13 to-release list", self.check_release_list),
            ("I5 certificates", self.check_certificates),
        ]
        for name, check in checks:
            self.report.checks.append(name)
            if self.repair:
                with self.db.transaction():
                    check()
            else:
                check()
        return self.report

    def _execute(self, sql: str, params: tuple = ()) -> None:
        if self.repair:
            self.db.execute(sql, params)

    def check_dirents(self) -> None:
        rows = self.db.execute(
            "SELECT d.id, d.parent, d.name, d.inode, p.mode FROM dirents d "
            "LEFT JOIN inodes p ON p.id = d.parent LEFT JOIN inodes i ON i.id = d.inode "
            "WHERE p.id IS NULL OR i.id IS NULL OR (p.mode & ?) != ?", (0o170000, stat.S_IFDIR)).fetchall()
        for dirent, parent, name, inode, _ in rows:
            self.found("I2", f"entry {bytes(name)!r} in directory {parent} names inode {inode}, but the inode "
                        "or its directory is missing (or not a directory): entry removed", True)
            self._execute("DELETE FROM dirents WHERE id=?", (dirent,))

    def check_inode_refcounts(self) -> None:
        rows = self.db.execute(
            "SELECT i.id, i.refcount, (SELECT COUNT(*) FROM dirents d WHERE d.inode = i.id) "
            "+ (i.id = ?) AS actual FROM inodes i WHERE i.refcount != actual", (ROOT,)).fetchall()
        for inode, recorded, actual in rows:
            self.found("I1", f"inode {inode} ({self.path_of(inode)}) has {actual} names, its link count said "
                        f"{recorded}: corrected", True)
            self._execute("UPDATE inodes SET refcount=? WHERE id=?", (actual, inode))

    def check_orphan_inodes(self) -> None:
        orphans = [i for (i,) in self.db.execute("SELECT id FROM inodes WHERE refcount=0 AND id != ?", (ROOT,))]
        if orphans:
            # Files unlinked while open when the daemon stopped: their data goes now.
            self.found("I1", f"{len(orphans)} inodes no directory names (unlinked while open before a crash "
                        "or unmount): deleted", True)
        for inode in orphans:
            for table in ("inode_blocks", "xattrs", "symlinks"):
                self._execute(f"DELETE FROM {table} WHERE inode=?", (inode,))
            self._execute("DELETE FROM inodes WHERE id=?", (inode,))

    def check_side_tables(self) -> None:
        for table in ("inode_blocks", "xattrs", "symlinks"):
            count = self.db.get_val(f"SELECT COUNT(*) FROM {table} WHERE inode NOT IN (SELECT id FROM inodes)")
            if count:
                self.found("I2", f"{count} rows of {table} belong to no inode: removed", True)
                self._execute(f"DELETE FROM {table} WHERE inode NOT IN (SELECT id FROM inodes)")
        # Raw SQL on blocks here and in the block/blob checks below: see the note above check_block_blobs.
        count = self.db.get_val(
            "SELECT COUNT(*) FROM inode_blocks WHERE block NOT IN (SELECT id FROM blocks)")
        if count:
            inodes = [i for (i,) in self.db.execute(
                "SELECT DISTINCT inode FROM inode_blocks WHERE block NOT IN (SELECT id FROM blocks)")]
            self.found("I3", f"{count} blocks of files are missing, data lost in: "
                        f"{', '.join(self.path_of(i) for i in inodes[:20])}: they read as zeros now", True)
            self._execute("DELETE FROM inode_blocks WHERE block NOT IN (SELECT id FROM blocks)")

    def check_subdir_counts(self) -> None:
        rows = self.db.execute(
            "SELECT i.id, i.subdirs, (SELECT COUNT(*) FROM dirents d JOIN inodes c ON c.id = d.inode "
            "WHERE d.parent = i.id AND (c.mode & ?) = ?) AS actual FROM inodes i WHERE i.subdirs != actual",
            (0o170000, stat.S_IFDIR)).fetchall()
        for inode, recorded, actual in rows:
            self.found("I10", f"directory {inode} ({self.path_of(inode)}) holds {actual} subdirectories, its count "
                        f"said {recorded} (its link count was {2 + recorded}): corrected", True)
            self._execute("UPDATE inodes SET subdirs=? WHERE id=?", (actual, inode))

    def check_acls(self) -> None:
        rows = self.db.execute(
            "SELECT x.inode, x.name, x.value, i.mode FROM xattrs x JOIN inodes i ON i.id = x.inode "
            "WHERE x.name IN (?, ?)", (ACCESS, DEFAULT)).fetchall()
        for inode, name, value, mode in rows:
            name = bytes(name)
            where = f"{name.decode()} of inode {inode} ({self.path_of(inode)})"
            try:
                acl = Acl.parse(bytes(value))
            except AclError as error:
                self.found("I11", f"{where} is not a valid ACL ({error}): removed, the mode alone applies", True)
                self._execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
                continue
            if name == DEFAULT:
                if not stat.S_ISDIR(mode):
                    self.found("I11", f"{where}: a default ACL on a non-directory means nothing: removed", True)
                    self._execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
                continue
            if acl.is_minimal:
                self.found("I11", f"{where} says only what the mode says: removed, the mode is "
                            f"{stat.S_IMODE(mode):04o}", True)
                self._execute("DELETE FROM xattrs WHERE inode=? AND name=?", (inode, name))
            elif acl.mode_bits() != mode & 0o777:
                # The mode is what stat shows and chmod set last: the ACL's class entries follow it.
                self.found("I11", f"{where} grants {acl.mode_bits():03o} to owner/group class/other, the mode "
                            f"{mode & 0o777:03o}: ACL brought in line with the mode", True)
                self._execute("UPDATE xattrs SET value=? WHERE inode=? AND name=?",
                              (acl.with_mode(mode).to_bytes(), inode, name))

    def check_past_eof(self) -> None:
        count = self.db.get_val(
            "SELECT COUNT(*) FROM inode_blocks ib JOIN inodes i ON i.id = ib.inode "
            "WHERE ib.blockno * ? >= i.size", (self.settings.block_size,))
        if count:
            self.found("I7", f"{count} blocks lie past the end of their file: released", True)
            self._execute(
                "DELETE FROM inode_blocks WHERE (inode, blockno) IN (SELECT ib.inode, ib.blockno FROM "
                "inode_blocks ib JOIN inodes i ON i.id = ib.inode WHERE ib.blockno * ? >= i.size)",
                (self.settings.block_size,))

    def _lose_block(self, block: int, why: str) -> None:
        """A block whose bytes exist nowhere: files that used it get a hole there, and are named."""
        inodes = [i for (i,) in self.db.execute("SELECT DISTINCT inode FROM inode_blocks WHERE block=?", (block,))]
        names = ", ".join(self.path_of(i) for i in inodes[:20]) or "no file"
        self.found("I4", f"block {block} {why}; its data is lost in {names} (reads as zeros there now)", True)
        self._execute("DELETE FROM inode_blocks WHERE block=?", (block,))
        self._execute("DELETE FROM blocks WHERE id=?", (block,))

    # The block and blob checks recount and cross-check the raw tables on purpose (and _lose_block and
    # the refcount checks repair them directly): the catalog's methods assume I3-I6 hold, and going
    # through them would hide, or trip over, the corruption looked for here. What only lists what the
    # catalog keeps (staged blocks, blobs on record) reads through it.

    def check_block_blobs(self) -> None:
        for (block,) in self.db.execute(
                "SELECT id FROM blocks WHERE blob IS NOT NULL AND blob NOT IN (SELECT id FROM blobs)").fetchall():
            self._lose_block(block, "lies in a blob this filesystem has no record of")

    def check_staged_blocks(self) -> None:
        for staged in self.catalog.staged():
            block, digest, size = staged.id, staged.digest, staged.size
            path = self.state.staging / str(block)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                # Staged, never certified, and its file is gone: a power loss, or a restore from a
                # snapshot taken while the block was staged.
                self._lose_block(block, "was staged and never certified, and its staging file is gone")
                continue
            try:
                open_block(self.contents, data, bytes(digest), size, f"staging file of block {block}")
            except BlockCorruptError as error:
                self._lose_block(block, f"was staged and its staging file does not match its hash ({error})")
                if self.repair:
                    path.unlink(missing_ok=True)

    def check_block_refcounts(self) -> None:
        rows = self.db.execute(
            "SELECT b.id, b.refcount, (SELECT COUNT(*) FROM inode_blocks ib WHERE ib.block = b.id) AS actual, "
            "b.blob FROM blocks b WHERE b.refcount != actual").fetchall()
        for block, recorded, actual, blob in rows:
            if actual == 0:
                self.found("I3", f"block {block} is used by no file (count said {recorded}): deleted", True)
                self._execute("DELETE FROM blocks WHERE id=?", (block,))
                if blob is None and self.repair:
                    (self.state.staging / str(block)).unlink(missing_ok=True)
            else:
                self.found("I3", f"block {block} is used {actual} times, its count said {recorded}: corrected",
                            True)
                self._execute("UPDATE blocks SET refcount=? WHERE id=?", (actual, block))

    def check_staging_orphans(self) -> None:
        if not self.state.staging.is_dir():
            return
        staged = {str(b) for b in self.catalog.staged_ids()}
        orphans = [p for p in self.state.staging.iterdir() if p.name not in staged]
        if orphans:
            self.found("I4", f"{len(orphans)} files in staging/ belong to no staged block (written before a "
                        "crash, or already in a certified blob): removed", True)
            if self.repair:
                for path in orphans:
                    path.unlink(missing_ok=True)

    def check_blob_refcounts(self) -> None:
        rows = self.db.execute(
            "SELECT o.id, o.blob_id, o.refcount, (SELECT COUNT(*) FROM blocks b WHERE b.blob = o.id) AS actual "
            "FROM blobs o WHERE o.refcount != actual").fetchall()
        for row_id, blob_id, recorded, actual in rows:
            self.found("I6", f"blob {blob_id} holds {actual} live blocks, its count said {recorded}: corrected",
                        True)
            self._execute("UPDATE blobs SET refcount=? WHERE id=?", (actual, row_id))

    def check_snapshot_records(self) -> None:
        stray = self.db.execute("SELECT DISTINCT seq FROM snapshot_blobs WHERE seq NOT IN "
                                "(SELECT seq FROM snapshots)").fetchall()
        for (seq,) in stray:
            # Kept, not dropped: a record of what a snapshot needs errs on the side of keeping blobs.
            self.found("I12", f"blobs are recorded for snapshot {seq}, which has no snapshot record: "
                       "recorded as retained (gc keeps its blobs until a later snapshot retires it)", True)
            self._execute("INSERT INTO snapshots (seq, created_ns, manifest, retained) VALUES (?, 0, '', 1)", (seq,))

    def check_release_list(self) -> None:
        """A listed blob that something reaches must never be released: taken off the list."""
        from .reachable import compute

        reach = compute(self.db, self.state)
        for (blob_id,) in self.db.execute("SELECT blob_id FROM gc_release").fetchall():
            if blob_id in reach:
                self.found("I13", f"blob {blob_id} is on the to-release list but still reachable: taken off "
                           "the list (nothing was released)", True)
                self._execute("DELETE FROM gc_release WHERE blob_id=?", (blob_id,))

    def uncertified_blobs(self) -> list[tuple[int, str]]:
        """Blobs whose recorded certificate does not hold n-f valid signatures of the committee of its
        epoch (found through the chain, when fsck has one)."""
        if self.committee is None:
            return []
        bad = []
        for blob in self.catalog.blobs():
            if not certificate_holds(self.committee, blob.blob_id, blob.certificate):
                bad.append((blob.id, blob.blob_id))
        return bad

    def check_certificates(self) -> None:
        for _, blob_id in self.uncertified_blobs():
            self.found("I5", f"blob {blob_id} has no valid availability certificate on record; 'walrusfs fsck' "
                        "with the nodes reachable asks them for fresh confirmations", False)


def certificate_holds(committee: Committee | CommitteeChain, blob_id: str, certificate: str) -> bool:
    """Whether ``certificate`` proves ``blob_id`` available: checked against the committee of the
    certificate's epoch (a blob certified in epoch 1 stays certified when the chain is at epoch 5)."""
    try:
        parsed = Certificate.from_json(certificate)
        if str(parsed.blob_id) != blob_id:
            return False
        parsed.verify(committee.committee_at(parsed.epoch) if isinstance(committee, CommitteeChain) else committee)
    except (FormatError, CertificateError, ChainError):
        return False
    return True
