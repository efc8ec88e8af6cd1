"""Two things libfuse 3 offers that pyfuse3 (3.5) does not pass on, added to the FUSE session.

- **fallocate**: pyfuse3 registers no fallocate handler, so libfuse answers ENOSYS and the kernel
  turns every later fallocate(2) into EOPNOTSUPP. This module puts one in.
- **FUSE_CAP_DONT_MASK**: without it the kernel applies the caller's umask to the mode of every
  file it creates, before the filesystem sees it. With POSIX ACLs a directory's default ACL must
  replace the umask (acl(5)), so walrusfs asks for the mode unmasked and applies the umask itself
  where there is no default ACL (namespace.py).

How: libfuse keeps the handler table (struct fuse_lowlevel_ops) inside its session, which pyfuse3
holds in a module-level C variable. After ``pyfuse3.init`` has made the session and before the
kernel's INIT request is served, :func:`install` finds that variable through the symbol table of
pyfuse3's extension module, finds the table in the session by pyfuse3's own handlers (init,
lookup, write_buf, forget_multi and readdirplus must sit where libfuse's public header puts
them), and then sets the fallocate slot and wraps init. If anything does not match (another
pyfuse3 or libfuse build), nothing is changed: fallocate stays EOPNOTSUPP, the umask stays the
kernel's, and the log says so.

The handlers run on the trio thread (pyfuse3 calls libfuse's dispatch with the GIL held), so the
fallocate handler only starts a trio task and returns; the task answers with fuse_reply_err.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

import pyfuse3
import trio

log = logging.getLogger(__name__)

FUSE_CAP_DONT_MASK = 1 << 6
_CONN_CAPABLE, _CONN_WANT = 20, 24  # offsets in struct fuse_conn_info (fuse_common.h)
# Slots of struct fuse_lowlevel_ops (fuse_lowlevel.h, libfuse 3.x), pointer-sized each.
_OPS = {"init": 0, "lookup": 2, "write_buf": 36, "forget_multi": 38, "fallocate": 40, "readdirplus": 41}
_PTR = ctypes.sizeof(ctypes.c_void_p)

_INIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_FALLOCATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
                              ctypes.c_int64, ctypes.c_void_p)

Fallocate = Callable[[int, int, int, int], Awaitable[None]]  # (inode, mode, offset, length)


class _Installed:
    """What must stay alive as long as the session: the C callbacks handed to libfuse."""

    callbacks: ClassVar[list] = []
    dont_mask: ClassVar[bool] = False
    fallocate: ClassVar[bool] = False


def elf_symbols(path: Path, wanted: set[str]) -> dict[str, int]:
    """The values of ``wanted`` symbols in an ELF64 little-endian file's .symtab and .dynsym."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    for _, sh_type, _, _, offset, size, link, _, _, entsize in sections:
        if sh_type not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strings_offset = sections[link][4]
        for start in range(offset, offset + size, entsize):
            name_offset, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, start)
            end = data.index(b"\0", strings_offset + name_offset)
            name = data[strings_offset + name_offset:end].decode(errors="replace")
            if name in wanted and value:
                found[name] = value
    return found


def _pointer_at(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def install(fallocate: Fallocate) -> None:
    """Add the fallocate handler and FUSE_CAP_DONT_MASK to pyfuse3's session. Call right after
    pyfuse3.init (before pyfuse3.main). Sets ``dont_mask()`` and ``has_fallocate()``."""
    _Installed.callbacks = []
    _Installed.dont_mask = _Installed.fallocate = False
    try:
        ops = _find_ops()
    except (OSError, ValueError, KeyError) as error:
        log.warning("fallocate stays unsupported and the kernel applies the umask under default ACLs: %s", error)
        return
    libfuse = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
    reply_err = libfuse.fuse_reply_err
    reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
    reply_err.restype = ctypes.c_int

    # pyfuse3's init is Cython code that runs Python: called with the GIL held (a CFUNCTYPE call
    # would release it).
    original_init = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(_pointer_at(ops + _OPS["init"] * _PTR))

    def init(userdata: int, conn: int) -> None:
        original_init(userdata, conn)
        capable = ctypes.c_uint.from_address(conn + _CONN_CAPABLE)
        want = ctypes.c_uint.from_address(conn + _CONN_WANT)
        if capable.value & FUSE_CAP_DONT_MASK:
            want.value |= FUSE_CAP_DONT_MASK
            _Installed.dont_mask = True
        log.info("FUSE session: fallocate handled, modes sent without the umask: %s", _Installed.dont_mask)

    async def answer(req: int, inode: int, mode: int, offset: int, length: int) -> None:
        error = 0
        try:
            await fallocate(inode, mode, offset, length)
        except pyfuse3.FUSEError as failure:
            error = failure.errno
        except Exception:
            log.exception("fallocate of inode %d (mode %#x, %d+%d) failed", inode, mode, offset, length)
            error = errno.EIO
        reply_err(req, error)

    def on_fallocate(req: int, inode: int, mode: int, offset: int, length: int, fi: int) -> None:
        try:
            trio.lowlevel.spawn_system_task(answer, req, inode, mode, offset, length)
        except Exception:  # an exception must not leave the kernel waiting for an answer
            log.exception("could not start fallocate of inode %d", inode)
            reply_err(req, errno.EIO)

    init_callback, fallocate_callback = _INIT(init), _FALLOCATE(on_fallocate)
    _Installed.callbacks = [original_init, init_callback, fallocate_callback, reply_err]
    ctypes.c_void_p.from_address(ops + _OPS["init"] * _PTR).value = ctypes.cast(init_callback, ctypes.c_void_p).value
    ctypes.c_void_p.from_address(ops + _OPS["fallocate"] * _PTR).value = ctypes.cast(
        fallocate_callback, ctypes.c_void_p).value
    _Installed.fallocate = True


def _find_ops() -> int:
    """The address of the fuse_lowlevel_ops table inside pyfuse3's session, checked slot by slot."""
    library = Path(pyfuse3.__file__)
    handlers = {f"__pyx_f_7pyfuse3_fuse_{name}": name for name in _OPS if name != "fallocate"}
    symbols = elf_symbols(library, {"PyInit_pyfuse3", "__pyx_v_7pyfuse3_session", *handlers})
    missing = {"PyInit_pyfuse3", "__pyx_v_7pyfuse3_session", *handlers} - symbols.keys()
    if missing:
        raise ValueError(f"{library.name} has no symbols {sorted(missing)} (a pyfuse3 build this code does not know)")
    module = ctypes.CDLL(str(library))  # already loaded: the same copy, no second initialisation
    bias = ctypes.cast(module.PyInit_pyfuse3, ctypes.c_void_p).value - symbols["PyInit_pyfuse3"]
    session = _pointer_at(bias + symbols["__pyx_v_7pyfuse3_session"])
    if not session:
        raise ValueError("pyfuse3 has no session (call after pyfuse3.init)")
    expected = {name: bias + symbols[symbol] for symbol, name in handlers.items()}
    for offset in range(0, 512, _PTR):  # the table is near the start of struct fuse_session
        ops = session + offset
        if all(_pointer_at(ops + _OPS[name] * _PTR) == address for name, address in expected.items()):
            if _pointer_at(ops + _OPS["fallocate"] * _PTR):
                raise ValueError("the session already has a fallocate handler")
            return ops
    raise ValueError("pyfuse3's handlers are not where libfuse's fuse_lowlevel_ops puts them")


def dont_mask() -> bool:
    """True once the kernel agreed to send modes without applying the umask."""
    return _Installed.dont_mask


def has_fallocate() -> bool:
    return _Installed.fallocate
