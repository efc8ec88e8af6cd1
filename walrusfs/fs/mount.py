"""Running a mount: the daemon that serves FUSE requests and uploads in the background.

The mount happens before the process daemonises, so a failure reaches the caller with a message
and a non-zero exit (``mount -t walrusfs`` relies on that); only then does the parent exit 0.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from ..client import BlobClient, ClientSettings
from ..committee import Committee
from ..errors import UserError
from ..keys import load_key
from ..malloc import set_thresholds
from ..redstuff import BlobId
from .blocks import BlockStore
from .cache import BlobCache
from .config import FsSettings, FsState
from .db import Database
from .operations import WalrusOperations
from .uploader import Uploader

log = logging.getLogger(__name__)

# On a plain umount, staged data gets this long to upload before the daemon exits; the rest is
# uploaded at the next mount.
EXIT_FLUSH_SECONDS = 30.0


@dataclass
class MountOptions:
    read_only: bool = False
    allow_other: bool = True
    debug: bool = False
    extra: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | None) -> MountOptions:
        options = cls()
        for item in filter(None, (text or "").split(",")):
            if item == "ro":
                options.read_only = True
            elif item in ("rw", "defaults", "_netdev", "auto", "noauto", "user", "nouser", "nofail",
                          "noatime", "relatime", "exec", "noexec", "suid", "nosuid", "dev", "nodev"):
                continue  # for mount(8) and fstab, or what walrusfs does anyway
            elif item == "allow_other":
                options.allow_other = True
            elif item == "debug":
                options.debug = True
            elif item.startswith("x-"):
                continue  # userspace-only fstab options (x-systemd.*)
            else:
                raise UserError(f"unknown mount option {item!r} (known: ro, rw, allow_other, debug, "
                                "_netdev and the generic mount(8) ones)")
        return options


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


def mount(state: FsState, mountpoint: Path, options: MountOptions, foreground: bool) -> int:
    settings = state.load_settings()
    if not mountpoint.is_dir():
        raise UserError(f"mount point {mountpoint} is not a directory")
    committee = Committee.load(settings.committee)
    try:
        key = load_key(Path(settings.writer_key))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the filesystem's write key {settings.writer_key}: {error}") from error
    if foreground:
        lock = acquire_lock(state)
        try:
            trio.run(serve, state, settings, committee, key, mountpoint, options, None)
        finally:
            os.close(lock)
        return 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:  # the caller: wait for the child to say it is mounted
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            return 0
        os.waitpid(pid, 0)
        raise UserError(message or "the mount daemon died before mounting (see its log: "
                        f"{state.root / 'mount.log'})")
    # The daemon.
    os.close(read_end)
    os.setsid()
    status = 1
    try:
        _redirect_output(state.root / "mount.log")
        lock = acquire_lock(state)
        trio.run(serve, state, settings, committee, key, mountpoint, options, write_end)
        os.close(lock)
        status = 0
    except UserError as error:
        _report(write_end, str(error))
    except BaseException as error:
        log.exception("mount daemon failed")
        _report(write_end, f"mount failed: {error}")
    finally:
        os._exit(status)


def _report(fd: int, message: str) -> None:
    with suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


def _redirect_output(log_path: Path) -> None:
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    logging.basicConfig(level=logging.INFO, force=True, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _return_freed_memory() -> None:
    """Have glibc map every buffer of 1 MiB or more on its own, so freeing one gives it back to the
    kernel: blobs come and go all the time, and the heap must not keep the high-water mark."""
    set_thresholds(mmap_threshold=1 << 20, trim_threshold=8 << 20)


async def serve(state: FsState, settings: FsSettings, committee: Committee, key: object,
                mountpoint: Path, options: MountOptions, ready_fd: int | None) -> None:
    _return_freed_memory()
    db = Database(state.db_path)
    # Two blobs in flight (one encoding while one uploads), each held with all its slivers.
    per_blob = settings.blob_size + committee.geometry.layout(settings.blob_size).encoded_length
    client_settings = ClientSettings(memory_budget=2 * per_blob, background_budget=per_blob,
                                     store_deadline=30.0)
    async with BlobClient(committee, writer_key=key, settings=client_settings) as client:

        async def fetch(blob_id: str) -> bytes:
            return await client.read(BlobId.parse(blob_id))

        cache = BlobCache(state.cache, settings.cache_size, fetch)
        blocks = BlockStore(db, state.staging, cache)
        uploader = Uploader(db, blocks, cache, client, settings.blob_size, settings.upload_delay)
        started = time.time()

        def status() -> dict:
            return {
                "pid": os.getpid(), "fs_id": settings.fs_id, "state": str(state.root),
                "mounted_since": started, "staged_bytes": blocks.staged_bytes,
                "dirty_bytes": operations.dirty_bytes,
                "uploads_in_flight": uploader.stats.in_flight,
                "uploaded_blobs": uploader.stats.blobs, "uploaded_bytes": uploader.stats.bytes,
                "upload_failures": uploader.stats.failures, "last_error": uploader.stats.last_error,
                "cache_bytes": cache.used, "cache_hits": cache.hits, "cache_misses": cache.misses,
                "nodes": client.health.snapshot(),
            }

        operations = WalrusOperations(db, blocks, uploader, settings.block_size,
                                      settings.staging_limit, status)
        purged = operations.purge_orphans()
        if purged:
            log.info("removed %d inodes that no directory names any more (left by a crash)", purged)
        fuse_options = set(pyfuse3.default_options)
        fuse_options |= {f"fsname=walrusfs:{settings.fs_id[:16]}", "subtype=walrusfs"}
        if options.allow_other:
            fuse_options.add("allow_other")
        if options.read_only:
            fuse_options.add("ro")
        if options.debug:
            fuse_options.add("debug")
        try:
            pyfuse3.init(operations, str(mountpoint), fuse_options)
        except RuntimeError as error:
            db.close()
            raise UserError(f"cannot mount on {mountpoint}: {error}") from error
        log.info("mounted %s on %s (fs %s, %d staged bytes to upload)", state.root, mountpoint,
                 settings.fs_id, blocks.staged_bytes)
        if ready_fd is not None:
            _report(ready_fd, "ok")
        try:
            async with trio.open_nursery() as nursery:
                operations.nursery = nursery
                nursery.start_soon(uploader.run)
                nursery.start_soon(_terminate_on_signal)
                nursery.start_soon(_raise_read_ahead, mountpoint)
                await pyfuse3.main()
                log.info("unmounted; uploading what is staged (up to %.0f s)", EXIT_FLUSH_SECONDS)
                with trio.move_on_after(EXIT_FLUSH_SECONDS):
                    try:
                        await operations.flush_all()
                    except OSError as error:
                        log.warning("staged data stays staged for the next mount: %s", error)
                if blocks.staged_bytes:
                    log.warning("%d bytes stay staged; they are uploaded at the next mount",
                                blocks.staged_bytes)
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            db.close()


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
