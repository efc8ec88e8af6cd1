"""Keyed BLAKE3 over many short equal-length inputs in one call: the leaves and nodes of RS16 commitments.

At n=1000 a blob has n^2 = a million cells to hash and 2n trees of ~n inner nodes each. The blake3
package hashes one input per Python call (~1.7 us of CPU each, measured here), which alone would cap
encoding near 10 MB/s. ``batchhash.c`` computes the same digests (keyed BLAKE3 of a single chunk,
checked against the blake3 package by tests/redstuff/test_batchhash.py) for 8 inputs at a time with
SIMD: ~760 MB per CPU-second for 192-byte cells, 1M 64-byte nodes in ~0.06 CPU-s (this machine).

The C file is compiled on first use with the system C compiler into a per-user cache directory and
loaded with ctypes (which releases the GIL, so a batch is split over two threads). Without a
compiler the same digests come from the blake3 package row by row: correct, only slower, and said
so once in the log. Inputs longer than one chunk (1024 bytes) always go row by row: there the call
overhead is small against the bytes.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import numpy as np

log = logging.getLogger(__name__)

CHUNK_LEN = 1024
DIGEST_SIZE = 32
_SOURCE = Path(__file__).with_name("batchhash.c")
# Below this many rows one thread does it: handing work to a second costs more than it saves.
_SPLIT_ROWS = 8192
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="redstuff-batchhash")
_kernel: ctypes._CFuncPtr | bool | None = None  # None: not tried yet; False: no compiler


def _flags() -> list[str]:
    try:
        avx2 = " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        avx2 = False
    return ["-O3", "-shared", "-fPIC", *(["-mavx2"] if avx2 else [])]


def _cache_dir() -> Path:
    base = os.environ.get("WALRUSFS_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "walrusfs"


def _build() -> ctypes._CFuncPtr | None:
    source, flags = _SOURCE.read_bytes(), _flags()
    tag = hashlib.sha256(source + " ".join(flags).encode()).hexdigest()[:16]
    library = _cache_dir() / f"batchhash-{tag}-{platform.machine()}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        # Built beside its final name and renamed: processes building at once never load half a file.
        fd, partial = tempfile.mkstemp(dir=library.parent, suffix=".so.partial")
        os.close(fd)
        try:
            subprocess.run(["cc", *flags, "-o", partial, str(_SOURCE)], check=True, capture_output=True, timeout=120)
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    function = ctypes.CDLL(str(library)).walrusfs_hash_many
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t,
                         ctypes.c_char_p, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


def kernel() -> ctypes._CFuncPtr | None:
    """The compiled batch hasher, built on first use; None where it cannot be built."""
    global _kernel
    if _kernel is None:
        try:
            _kernel = _build()
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("batch hashing falls back to one blake3 call per input (slower): could not build "
                        "%s with the C compiler (%s); install gcc (or cc) to get the fast path", _SOURCE, error)
            _kernel = False
    return _kernel or None


def hash_rows(data: np.ndarray, key: bytes) -> np.ndarray:
    """Keyed BLAKE3 of every row of ``data`` ((count, length) uint8, rows contiguous): (count, 32)."""
    if len(key) != 32:
        raise ValueError(f"a BLAKE3 key is 32 bytes, got {len(key)}")
    if data.ndim != 2 or data.dtype != np.uint8:
        raise ValueError(f"rows to hash must be a 2-D uint8 array, got {data.dtype} {data.shape}")
    count, length = data.shape
    out = np.empty((count, DIGEST_SIZE), dtype=np.uint8)
    if count == 0:
        return out
    function = kernel() if length <= CHUNK_LEN else None
    if function is None:
        for i in range(count):
            out[i] = np.frombuffer(blake3.blake3(data[i], key=key).digest(), dtype=np.uint8)
        return out
    if length and data.strides[1] != 1:
        data = np.ascontiguousarray(data)
    stride = data.strides[0]

    def run(first: int, stop: int) -> None:
        if function(data.ctypes.data + first * stride, stop - first, stride, length, key,
                    out.ctypes.data + first * DIGEST_SIZE) != 0:
            raise RuntimeError("batch hash kernel refused its input")

    if count < _SPLIT_ROWS:
        run(0, count)
    else:
        half = count // 2
        other = _POOL.submit(run, half, count)
        run(0, half)
        other.result()
    return out
