"""What encryption may cost (docs/encryption.md, "Cost"): blocks are sealed and opened off the event
loop, a sealed block is checked by its authenticated nonce instead of a second hash, and the sealed
format stays version 1 (what older mounts wrote stays readable)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import blake3
import numpy as np
import pytest
import trio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from unit_fs import BLOCK, UnitFs

from walrusfs import directio
from walrusfs.fs import blocks as blocks_module
from walrusfs.fs.blocks import open_block
from walrusfs.fs.encryption import Purpose, SealedContents, read_key_of
from walrusfs.keys import generate_key

READ_KEY = read_key_of(generate_key())


def test_the_sealed_format_is_still_version_1_byte_for_byte() -> None:
    """Sealing into one buffer behind the header writes what header + AES-GCM wrote before."""
    contents = SealedContents(READ_KEY)
    plaintext = os.urandom(100_000)
    digest = contents.digest(plaintext)
    header = b"WFSE" + bytes([1, Purpose.BLOCK]) + (0).to_bytes(4, "little") + digest[:12]
    data_key = blake3.blake3(READ_KEY, derive_key_context="walrusfs 2026-12-01 data encryption key v1").digest()
    assert bytes(contents.seal(plaintext, Purpose.BLOCK)) == header + AESGCM(data_key).encrypt(
        digest[:12], plaintext, header)


def test_a_sealed_block_is_checked_without_hashing_its_plaintext_again(monkeypatch: pytest.MonkeyPatch) -> None:
    contents = SealedContents(READ_KEY)
    plaintext = os.urandom(50_000)
    digest = contents.digest(plaintext)
    stored = contents.seal(plaintext, Purpose.BLOCK)

    def no_hash(data: bytes) -> bytes:
        raise AssertionError("the plaintext was hashed again: the GCM tag and the nonce already prove it")

    monkeypatch.setattr(contents, "digest", no_hash)
    assert open_block(contents, memoryview(bytes(stored)), digest, len(stored), "block 1") == plaintext


def test_a_sealed_block_lies_page_aligned_in_memory_and_its_staging_file_is_written_from_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sealing makes the only copy of a block on its way to its staging file: its memory starts on
    a page boundary, so O_DIRECT writes it from where it lies (a plain block from FUSE is copied into
    an aligned buffer first). Only the last partial page goes through a pooled page."""
    contents = SealedContents(READ_KEY)
    block = os.urandom(1 << 20)
    stored = contents.seal(block, Purpose.BLOCK)
    assert np.frombuffer(stored, dtype=np.uint8).ctypes.data % directio.PAGE == 0
    borrowed: list[int] = []
    real_borrow = directio.POOL.borrow
    monkeypatch.setattr(directio.POOL, "borrow", lambda size: borrowed.append(size) or real_borrow(size))
    directio.write_file(tmp_path / "staged", stored)
    assert borrowed == [directio.PAGE]  # the 38-byte tail's page, not a copy of the block
    assert (tmp_path / "staged").read_bytes() == bytes(stored)  # exact: no padding left behind
    assert contents.open_as(directio.read_file(tmp_path / "staged"), Purpose.BLOCK, contents.digest(block)) == block
    # Snapshots' objects are sealed as before, into plain memory (nothing writes them to a staging file).
    assert isinstance(contents.seal(block, Purpose.SEGMENT), bytearray)


def _sealed_fs(fs: UnitFs) -> SealedContents:
    contents = SealedContents(READ_KEY)
    fs.blocks.contents = contents
    return contents


def _on_threads(contents: SealedContents, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """Record on which threads blocks are sealed and opened."""
    seen: dict[str, set[int]] = {"seal": set(), "open": set()}
    for name in seen:
        original: Callable = getattr(contents, name)

        def record(*args: object, _original: Callable = original, _name: str = name) -> object:
            seen[_name].add(threading.get_ident())
            return _original(*args)

        monkeypatch.setattr(contents, name, record)
    return seen


def test_whole_blocks_are_sealed_and_opened_off_the_event_loop(fs_run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks_module, "OFFLOAD_BYTES", BLOCK, raising=False)  # the unit tier's blocks are small
    data = os.urandom(8 * BLOCK)

    async def body(fs: UnitFs) -> None:
        seen = _on_threads(_sealed_fs(fs), monkeypatch)
        loop = threading.get_ident()
        inode = await fs.create(b"big")
        await fs.write(inode, 0, data)
        await fs.ops.flush(inode)
        await fs.uploader.wait_certified()
        fs.blocks._memory.clear()  # read back from the cached blobs: opened, not remembered
        fs.blocks._memory_bytes = 0
        assert await fs.read(inode) == data
        assert seen["seal"] and loop not in seen["seal"]
        assert seen["open"] and loop not in seen["open"]

    fs_run(body)


def test_a_block_being_sealed_still_reads_as_written(fs_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a flushed buffer is sealed in a worker thread, a read of it sees the new bytes, not the
    block mapped before."""
    monkeypatch.setattr(blocks_module, "OFFLOAD_BYTES", 1)

    async def body(fs: UnitFs) -> None:
        _sealed_fs(fs)
        inode = await fs.create(b"f")
        await fs.write(inode, 0, b"old" * 100)
        await fs.ops.flush(inode)
        await fs.write(inode, 0, b"new")
        sealing, release = trio.Event(), trio.Event()
        prepare = fs.blocks.prepare_large

        async def slow_prepare(data: bytes):  # type: ignore[no-untyped-def]
            sealing.set()
            await release.wait()
            return await prepare(data)

        monkeypatch.setattr(fs.blocks, "prepare_large", slow_prepare)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.ops.flush, inode)
            await sealing.wait()
            assert (await fs.read(inode))[:6] == b"newold"
            release.set()
        fs.blocks._memory.clear()
        fs.blocks._memory_bytes = 0
        assert (await fs.read(inode))[:6] == b"newold"

    fs_run(body)
