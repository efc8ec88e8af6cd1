"""Running a mount: the daemon that serves FUSE requests and uploads in the background.

The mount happens in the daemon (daemon.py forks it), and the caller waits for its word, so a failure
reaches the caller with a message and a non-zero exit (``mount -t walrusfs`` relies on that); only
then does the parent exit 0.

The mount options (``-o``, fstab) are parsed in mount_options.py.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pyfuse3
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .. import directio
from ..client import ClientSettings
from ..durable import replace_durably
from ..errors import UserError
from ..keys import load_key
from ..malloc import keep_freed_buffers
from ..protocol.committee import Committee
from ..redstuff import BlobId
from .blocks import BlockStore
from .cache import BlobCache
from .capability import ReadCapability
from .catalog import Catalog
from .chain import fs_chain, fs_client
from .config import FsSettings, FsState, fs_home
from .daemon import READY, run_daemon, tell_caller
from .data_keys import data_keys_in
from .db import Database
from .encryption import contents_for, read_key_of
from .follow import SnapshotFollower
from .fsck import Fsck
from .gc import GarbageCollector, gc_status
from .metrics import export_metrics
from .mount_options import MountOptions
from .mount_status import LeaseStatus, MountStatus, NodeHealth, SnapshotStatus
from .mountpoint import check_mountpoint, clear_dead_mount, mounted_here
from .notify import describe, report_status, sd_notify
from .operations import WalrusOperations
from .publisher import SnapshotPublisher
from .reachable import pin_snapshot
from .renewal import renewer_for
from .restore import (
    find_chain_of,
    manifest_in,
    refresh_shared_state,
    resolve_staged,
    restore_db_file,
    restore_state,
)
from .snapshot import SnapshotError
from .space import SpaceAccount
from .uploader import Uploader
from .writer_lease import acquire_for_mount

log = logging.getLogger(__name__)

# On a plain umount, staged data gets this long to upload before the daemon exits; the rest is
# uploaded at the next mount.
EXIT_FLUSH_SECONDS = 30.0


def acquire_lock(state: FsState) -> int:
    """Hold the state directory's lock for the life of the process: one writable mount at a time."""
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"filesystem {state.root} is already mounted (by pid {holder}); "
                        "a second writable mount is refused. Unmount it first.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def mount(state: FsState, mountpoint: Path, options: MountOptions, foreground: bool,
          capability: ReadCapability | None = None) -> int:
    """Mount ``state`` (``capability``: a read capability's state, restored or refreshed first)."""
    clear_dead_mount(mountpoint)
    current = mounted_here(mountpoint)
    if current is not None:
        # mount -a, a repeated mount or a restarted unit: what is asked is already there.
        # A mount that follows new snapshots shows one, but none was asked for.
        pinned = None if current.snapshot is None or current.snapshot.following else current.snapshot.seq
        same_snapshot = not options.read_only or pinned == options.snapshot
        if Path(current.state or "") == state.root and bool(current.read_only) == options.read_only \
                and same_snapshot:
            log.debug("%s is already mounted on %s", state.root, mountpoint)
            return 0
        raise UserError(f"{mountpoint} already has a walrusfs mount (filesystem {current.state}"
                        f"{', read-only' if current.read_only else ''}, daemon pid {current.pid}): "
                        f"unmount it first (walrusfs umount {mountpoint})")
    if capability is not None:
        options.read_only = True
        if capability.snapshot is not None:
            options.follow_interval = 0  # it names one snapshot: it stays on it
        restore_shared(state, capability, options)
    elif options.key and not state.settings_path.exists():
        restore_from_network(state, options)
    settings = state.load_settings()
    check_mountpoint(mountpoint, options)
    committee = Committee.load(settings.committee)
    keys = MountKeys.load(state, settings)
    if not options.read_only and (keys.fs_key is None or keys.writer is None):
        raise UserError(f"{state.root} was made from a read capability (it holds no key of the filesystem): it "
                        "mounts read-only only (-o ro)")
    db_path = state.db_path
    if options.snapshot is not None:
        db_path = trio.run(prepare_snapshot, state, settings, committee, keys, options.snapshot)
    args = (state, settings, committee, keys, mountpoint, options, db_path)
    if foreground:
        lock = None if options.snapshot is not None else acquire_lock(state)
        try:
            trio.run(serve, *args, None)
        finally:
            if lock is not None:
                os.close(lock)
        return 0

    def daemon(ready_fd: int) -> None:  # in the daemon process (daemon.py)
        lock = None if options.snapshot is not None else acquire_lock(state)
        trio.run(serve, *args, ready_fd)
        if lock is not None:
            os.close(lock)

    run_daemon(daemon, state.root / "mount.log", options.log_max_size)
    return 0


@dataclass(frozen=True)
class MountKeys:
    """What a mount holds: a filesystem's own state has all three keys; one made from a read
    capability (capability.py) has only the read key, and mounts read-only."""

    writer: Ed25519PrivateKey | None  # signs stores and deletes on the nodes
    fs_key: Ed25519PrivateKey | None  # owns the filesystem ID, signs its root records
    read_key: bytes  # opens its sealed blocks and snapshots (encryption.py)

    @classmethod
    def load(cls, state: FsState, settings: FsSettings) -> MountKeys:
        shared = state.root / "read.cap"
        if not settings.fs_key and not state.fs_key_path.exists() and shared.exists():
            return cls(None, None, ReadCapability.parse(shared.read_text()).read_key)
        writer = _load(settings.writer_key, "the nodes' write key")
        fs_key = _load(settings.fs_key or str(state.fs_key_path), "the filesystem's key")
        return cls(writer, fs_key, read_key_of(fs_key))


def capability_state(capability: ReadCapability, home: str | Path | None) -> FsState:
    """Where a read capability's local state (metadata, cache) lives: one directory per filesystem
    and pinned snapshot, named without the capability's secret."""
    name = f"shared-{capability.fs_id[:16]}" + ("" if capability.snapshot is None else f"-{capability.snapshot}")
    return FsState(fs_home(home) / name)


def restore_shared(state: FsState, capability: ReadCapability, options: MountOptions) -> None:
    from ..cluster import COMMITTEE_FILE, bundled_file

    committee_path = bundled_file(options.committee, COMMITTEE_FILE)
    trio.run(partial(refresh_shared_state, state, committee_path, Committee.load(committee_path), capability))


def _load(path: str, what: str) -> Ed25519PrivateKey:
    try:
        return load_key(Path(path))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load {what} {path}: {error}") from error


def restore_from_network(state: FsState, options: MountOptions) -> None:
    from ..cluster import COMMITTEE_FILE, WRITER_KEY_FILE, bundled_file

    committee_path = bundled_file(options.committee, COMMITTEE_FILE)
    writer_key_path = bundled_file(options.writer_key, WRITER_KEY_FILE)
    committee = Committee.load(committee_path)
    writer_key = _load(str(writer_key_path), "the nodes' write key")
    fs_key = _load(options.key or "", "the filesystem's key")
    print(f"{state.root} has no local state: restoring it from the network", file=sys.stderr)
    report = trio.run(partial(restore_state, state, committee_path, committee, writer_key_path, writer_key, fs_key))
    for finding in report.findings:
        print(f"fsck after restore: {finding.message}", file=sys.stderr)


async def prepare_snapshot(state: FsState, settings: FsSettings, committee: Committee, keys: MountKeys,
                           seq: int) -> Path:
    """The database of snapshot ``seq``, fetched once into <state>/snapshots/<seq>/."""
    directory = state.snapshots / str(seq)
    db_path = directory / "metadata.db"
    if db_path.exists():
        return db_path
    directory.mkdir(parents=True, exist_ok=True)
    async with fs_client(state, committee, keys.writer) as client:
        await client.refresh_chain("mount")
        chain = await find_chain_of(client, settings.fs_id, keys.read_key)
        manifest, _ = await manifest_in(client, settings.fs_id, keys.read_key, chain, seq)
        await restore_db_file(client, manifest, db_path, read_key=keys.read_key)
    if state.db_path.exists():
        resolved, lost = resolve_staged(db_path, state.db_path)
        log.info("snapshot %d: %d blocks staged when it was taken found certified since, %d not", seq, resolved, lost)
    return db_path


async def serve(state: FsState, settings: FsSettings, committee: Committee, keys: MountKeys, mountpoint: Path,
                options: MountOptions, db_path: Path, ready_fd: int | None) -> None:
    keep_freed_buffers(keep=128 << 20)  # the daemon's RSS budget (bench mount: 400 MB)
    directio.POOL.max_idle_bytes = 40 << 20  # one blob's aligned buffer and some blocks' (RSS budget)
    log.debug("serving %s (database %s) with %s", state.root, db_path, options)
    old_snapshot = options.snapshot is not None
    if old_snapshot:  # the writer's gc keeps what it shows while this process lives (reachable.py)
        pin_snapshot(db_path)
    db = Database(db_path)
    # How blocks are sealed (encryption.py), with the data keys rotation added (data_keys.py).
    contents = contents_for(settings.encryption, keys.read_key, data_keys_in(db))
    staging = db_path.parent / "staging" if old_snapshot else state.staging
    if not old_snapshot:
        if state.mounted_marker.exists():
            # The last mount did not end cleanly (kill -9, power loss): check before serving.
            report = Fsck(db, state, settings, fs_chain(state, committee), contents=contents).run_local()
            log.warning("the last mount did not end cleanly; fsck: %s",
                        "clean" if not report.findings else f"{len(report.findings)} problems repaired or reported")
        replace_durably(state.mounted_marker, f"{os.getpid()}\n".encode())
    # Sealed blocks are a little larger than the blocks they hold: a blob takes as many as unsealed ones.
    pack_size = settings.blob_size + settings.blob_size // settings.block_size * contents.overhead
    # Two blobs in flight (one encoding while one uploads), each held with all its slivers.
    per_blob = pack_size + committee.geometry.layout(pack_size).encoded_length
    client_settings = ClientSettings(memory_budget=2 * per_blob, background_budget=per_blob,
                                     store_deadline=options.store_deadline, owner=settings.fs_id,
                                     blob_term=settings.blob_term_days * 86400)
    async with fs_client(state, committee, keys.writer, client_settings) as client:
        await client.refresh_chain("mount")  # the committee of now, before the first request

        async def fetch(blob_id: str) -> bytes:
            return await client.read(BlobId.parse(blob_id))

        cache = BlobCache(state.cache, settings.cache_size, fetch)
        catalog = Catalog(db)
        blocks = BlockStore(db, staging, cache, catalog=catalog, contents=contents)
        uploader = Uploader(catalog, blocks, cache, client, pack_size, settings.upload_delay,
                            fill_cache=settings.cache_after_upload)
        publisher = None if options.read_only else SnapshotPublisher(
            state, settings, db, client, keys.fs_key, partial(_certify_staged, catalog, uploader))
        lease = None
        if publisher is not None:  # a writable mount: one writer per filesystem, across machines
            try:
                lease = await acquire_for_mount(state, client, keys.fs_key, takeover=options.takeover,
                                                term=options.lease_term)
            except BaseException:
                db.close()
                state.mounted_marker.unlink(missing_ok=True)  # refused: this mount never ran
                raise
            publisher.lease = lease
            publisher.mark_mounted()
        renewer = None if publisher is None else renewer_for(client, settings, db, publisher, state)
        started = time.time()

        def status() -> MountStatus:
            return MountStatus(
                pid=os.getpid(), fs_id=settings.fs_id, state=str(state.root), encryption=settings.encryption,
                mounted_since=started, staged_bytes=blocks.staged_bytes,
                dirty_bytes=operations.dirty_bytes,
                uploads_in_flight=uploader.stats.in_flight,
                uploaded_blobs=uploader.stats.blobs, uploaded_bytes=uploader.stats.bytes,
                upload_failures=uploader.stats.failures, last_error=uploader.stats.last_error,
                upload_permanent_error=uploader.stats.permanent_error,
                last_error_at=uploader.stats.last_error_at, last_upload_at=uploader.stats.last_upload_at,
                cache_capacity=settings.cache_size,
                cache_bytes=cache.used, cache_hits=cache.hits, cache_misses=cache.misses,
                nodes={node: NodeHealth.from_json(health) for node, health in client.health.snapshot().items()
                       if node in client.connections},  # the current committee's (nodes retire)
                read_only=options.read_only,
                # A read-only mount of an old snapshot publishes none: it reports which one it shows.
                snapshot=publisher.status() if publisher is not None else follower.status() if follower else
                SnapshotStatus(seq=options.snapshot, reported=frozenset({"seq"})),
                lease=None if lease is None else LeaseStatus.from_json(lease.status()),
                epoch=client.committee.epoch,
                renewal=None if renewer is None else renewer.status,
                over_quota=uploader.stats.over_quota,
                extra={"space": space.to_json(), **({} if collector is None else {"gc": gc_status(collector)})},
            )

        operations = WalrusOperations(db, blocks, uploader, settings.block_size,
                                      settings.staging_limit, lambda: status().to_json())
        operations.used_bytes = (space := SpaceAccount(db, lambda: client.committee.geometry,
                                                       lambda: blocks.staged_bytes)).used_bytes
        collector = None if publisher is None else GarbageCollector.for_mount(
            db, state, client, settings, catalog, cache, publisher, lease, keys.read_key, pack_size)
        if publisher is not None and collector is not None:
            operations.controls[b"snapshot"] = partial(_snapshot_now, publisher)
            operations.controls.update(collector.controls())
        if options.read_only:  # nothing to cache, and it keeps file sizes a new snapshot changes (follow.py)
            operations.enable_writeback_cache = False
        follower = SnapshotFollower(state, settings, keys.read_key, client, db, operations, options.follow_interval) \
            if keys.fs_key is None and options.snapshot is None and options.follow_interval else None
        operations.follows_snapshots = follower is not None
        if lease is not None:
            operations.durability_guard = lease.ensure_held
        purged = 0 if options.read_only else operations.purge_orphans()
        if purged:
            log.info("removed %d inodes that no directory names any more (left by a crash)", purged)
        fuse_options = set(pyfuse3.default_options)
        fuse_options |= {f"fsname={_fsname(options.fsname, settings.fs_id)}", "subtype=walrusfs"}
        if options.allow_other:
            fuse_options.add("allow_other")
        if options.read_only:
            fuse_options.add("ro")
        if options.debug:
            fuse_options.add("debug")
        try:
            _init_fuse(operations, mountpoint, fuse_options)
            from .fuse_ext import install  # what pyfuse3 does not pass on: fallocate, DONT_MASK

            install(operations.fallocate)
        except UserError:
            db.close()
            if not old_snapshot:  # it never mounted: no crash for the next mount to check for
                state.mounted_marker.unlink(missing_ok=True)
            raise
        log.info("mounted %s on %s (fs %s, %d staged bytes to upload)", state.root, mountpoint,
                 settings.fs_id, blocks.staged_bytes)
        if ready_fd is not None:
            tell_caller(ready_fd, READY)
        sd_notify(f"READY=1\nSTATUS=mounted on {mountpoint}: {describe(status())}")
        try:
            async with trio.open_nursery() as nursery:
                operations.nursery = nursery
                if not old_snapshot:
                    nursery.start_soon(uploader.run)
                if publisher is not None and collector is not None:
                    nursery.start_soon(publisher.run)
                    nursery.start_soon(collector.run_periodically, settings.gc_interval)
                if follower is not None:
                    nursery.start_soon(follower.run)
                if lease is not None:
                    nursery.start_soon(lease.run)
                if renewer is not None:
                    nursery.start_soon(renewer.run)
                nursery.start_soon(export_metrics, options.metrics, options.metrics_textfile, status)
                nursery.start_soon(report_status, status)
                nursery.start_soon(_terminate_on_signal)
                nursery.start_soon(_raise_read_ahead, mountpoint)
                await pyfuse3.main()
                sd_notify("STOPPING=1\nSTATUS=unmounted; uploading what is staged")
                log.info("unmounted; uploading what is staged (up to %.0f s)", EXIT_FLUSH_SECONDS)
                with trio.move_on_after(0 if old_snapshot else EXIT_FLUSH_SECONDS):
                    try:
                        await operations.flush_all()
                    except OSError as error:
                        log.warning("staged data stays staged for the next mount: %s", error)
                if blocks.staged_bytes:
                    log.warning("%d bytes stay staged; they are uploaded at the next mount",
                                blocks.staged_bytes)
                if publisher is not None and publisher.changed():
                    with trio.move_on_after(EXIT_FLUSH_SECONDS):
                        try:
                            await publisher.snapshot("unmount")
                        except SnapshotError as error:
                            log.error("no metadata snapshot at unmount (the next mount takes one): %s", error)
                if publisher is not None:
                    publisher.mark_unmounted()
                if lease is not None and not blocks.staged_bytes and publisher is not None and not publisher.changed():
                    with trio.move_on_after(EXIT_FLUSH_SECONDS):
                        await lease.release()  # all published: another machine may mount at once
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            db.close()
        if not old_snapshot:
            state.mounted_marker.unlink(missing_ok=True)


def _fsname(source: str | None, fs_id: str) -> str:
    """The source /proc/mounts shows: the name the caller mounted, so that mount(8) finds an fstab
    entry already mounted (mount -a) and df names it as fstab does. libfuse splits options at commas
    and mountinfo at spaces, so a name with those falls back to the filesystem's ID."""
    if source and re.fullmatch(r"[^\s,\\]+", source):
        return source
    return f"walrusfs:{fs_id[:16]}"


def _init_fuse(operations: WalrusOperations, mountpoint: Path, fuse_options: set[str]) -> None:
    """pyfuse3.init, with the reason a mount failed: its RuntimeError says only "fuse_session_mount
    failed"; libfuse and fusermount3 print why (no access to /dev/fuse, allow_other not allowed, ...)
    on stderr, which is caught here, kept in the log and made part of the error."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as said:
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            pyfuse3.init(operations, str(mountpoint), fuse_options)
            failure = None
        except RuntimeError as error:
            failure = error
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        text = said.read().decode(errors="replace").strip()
    if text:
        print(text, file=sys.stderr)  # as libfuse meant it (the log, or the terminal in the foreground)
    if failure is None:
        return
    reason = "; ".join(line.removeprefix("fuse: ") for line in text.splitlines()) or str(failure)
    hint = ""
    if "/dev/fuse" in text and "ermission denied" in text:
        hint = (f" (uid {os.getuid()} may not use FUSE here: mount as root, or give this user access to "
                "/dev/fuse; most distributions make it mode 0666)")
    elif "user_allow_other" in text:
        hint = " (drop allow_other, or add user_allow_other to /etc/fuse.conf)"
    raise UserError(f"cannot mount on {mountpoint}: {reason}{hint}") from failure


async def _snapshot_now(publisher: SnapshotPublisher) -> None:
    try:
        await publisher.snapshot("asked")
    except SnapshotError as error:
        log.error("snapshot failed: %s", error)
        raise OSError(errno.EIO, str(error)) from error


async def _certify_staged(catalog: Catalog, uploader: Uploader) -> None:
    """Wait until what is staged now is certified (newer writes are not waited for)."""
    staged = catalog.staged_ids()
    if staged:
        await uploader.wait_certified(staged)


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


async def _raise_read_ahead(mountpoint: Path) -> None:
    """Ask the kernel for 1 MiB reads instead of 128 KiB: an eighth of the per-request cost.

    Only after the kernel's INIT handshake, which sets the read-ahead to what was offered then.
    """
    await trio.sleep(0.5)
    # The device numbers come from mountinfo: a stat() of our own mount point would wait for this
    # very process to answer it.
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if fields[4] == str(mountpoint):  # resolved by the caller, before mounting
                Path(f"/sys/class/bdi/{fields[2]}/read_ahead_kb").write_text("1024")
                log.debug("read-ahead of %s raised to 1 MiB", mountpoint)
                return
    except OSError as error:
        log.debug("could not raise read_ahead_kb: %s", error)
