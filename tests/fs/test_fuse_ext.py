"""fuse_ext.py outside a mount: it finds what it needs in the installed pyfuse3, and changes nothing
(leaving fallocate unsupported) when it cannot find a session, instead of failing the mount."""

from __future__ import annotations

import logging
from pathlib import Path

import pyfuse3
import pytest

from walrusfs.fs import fuse_ext


def test_the_installed_pyfuse3_has_the_symbols_it_needs() -> None:
    names = {"PyInit_pyfuse3", "__pyx_v_7pyfuse3_session", "__pyx_f_7pyfuse3_fuse_init",
             "__pyx_f_7pyfuse3_fuse_lookup", "__pyx_f_7pyfuse3_fuse_readdirplus"}
    assert fuse_ext.elf_symbols(Path(pyfuse3.__file__), names).keys() == names


def test_without_a_session_nothing_is_changed(caplog: pytest.LogCaptureFixture) -> None:
    async def never(inode: int, mode: int, offset: int, length: int) -> None:
        raise AssertionError("not reachable")

    with caplog.at_level(logging.WARNING, logger=fuse_ext.__name__):
        fuse_ext.install(never)
    assert not fuse_ext.has_fallocate() and not fuse_ext.dont_mask()
    assert "fallocate stays unsupported" in caplog.text and "no session" in caplog.text


def test_a_file_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.so").write_bytes(b"not an ELF file")
    with pytest.raises(ValueError, match="not a 64-bit"):
        fuse_ext.elf_symbols(tmp_path / "x.so", {"anything"})
