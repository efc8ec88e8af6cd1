"""Bit-sliced XOR programs: multiply symbols by a GF(2^8) matrix using only XORs of uint64 words.

A symbol of s bytes is read as 8 packets of s/8 bytes; bit c of the i-th virtual field element is bit
i of packet c. Multiplying by a field element is then a fixed 8x8 GF(2) matrix acting on packets, so
a whole (m x k) coefficient matrix becomes an (8m x 8k) bit matrix, and every output packet is the
XOR of the input packets its row selects. numpy XORs long uint64 runs at tens of GB/s, so the cost is
the number of XORs: ``compile_program`` shares common pairs between rows (greedy Paar
elimination) and ``XorProgram.run`` walks the packets in cache-sized blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import gf256

# Op codes: (XOR3, dst, a, b) dst = a ^ b;  (ACC, dst, a) dst ^= a;  (COPY, dst, a);  (ZERO, dst).
XOR3, ACC, COPY, ZERO = range(4)

# Slots are numbered: inputs [0, n_in), outputs [n_in, n_in + n_out), temporaries after that.
# Bytes one numpy call should touch: large enough to amortise the call, small enough that the
# packets a block keeps live stay in the 2 MiB L2 cache.
BLOCK_BYTES = 16 * 1024
# Pair elimination costs O(slots^2) per step; beyond this many bit columns it is not worth it.
CSE_MAX_COLUMNS = 512


@dataclass(frozen=True)
class XorProgram:
    input_packets: int
    output_packets: int
    temp_buffers: int
    ops: tuple[tuple[int, ...], ...]

    @property
    def xor_count(self) -> int:
        return sum(1 for op in self.ops if op[0] in (XOR3, ACC))

    def run(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        """outputs = M @ inputs, for symbols given as uint64 arrays of shape (..., 8, P).

        All inputs and outputs share one shape. Outputs are overwritten, never read, and must not
        alias inputs.
        """
        if 8 * len(inputs) != self.input_packets or 8 * len(outputs) != self.output_packets:
            raise ValueError(
                f"program takes {self.input_packets // 8} inputs and {self.output_packets // 8} "
                f"outputs, got {len(inputs)} and {len(outputs)}"
            )
        if not outputs:
            return
        shape = outputs[0].shape
        words = shape[-1]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
        block = max(64, BLOCK_BYTES // (8 * max(batch, 1)))
        temp_store = np.empty((self.temp_buffers, *shape[:-2], min(block, words)), np.uint64)
        xor, copyto = np.bitwise_xor, np.copyto
        for start in range(0, words, block):
            stop = min(start + block, words)
            slots: list[np.ndarray] = [s[..., c, start:stop] for s in inputs for c in range(8)]
            slots += [s[..., c, start:stop] for s in outputs for c in range(8)]
            slots += [t[..., : stop - start] for t in temp_store]
            for op in self.ops:
                code = op[0]
                if code == ACC:
                    xor(slots[op[1]], slots[op[2]], out=slots[op[1]])
                elif code == XOR3:
                    xor(slots[op[2]], slots[op[3]], out=slots[op[1]])
                elif code == COPY:
                    copyto(slots[op[1]], slots[op[2]])
                else:
                    slots[op[1]].fill(0)


def compile_matrix(matrix: np.ndarray, *, eliminate_common_pairs: bool = True) -> XorProgram:
    """Compile an (m x k) GF(2^8) coefficient matrix into an XOR program."""
    return compile_bits(gf256.expand_to_bits(np.asarray(matrix)), eliminate_common_pairs)


def compile_bits(bits: np.ndarray, eliminate_common_pairs: bool = True) -> XorProgram:
    rows, cols = bits.shape
    row_sets, temps = _eliminate_pairs(bits) if (
        eliminate_common_pairs and cols <= CSE_MAX_COLUMNS
    ) else ([list(np.flatnonzero(r)) for r in bits], [])
    return _schedule(rows, cols, row_sets, temps)


def _eliminate_pairs(bits: np.ndarray) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Greedy Paar: repeatedly give the pair of columns shared by most rows its own temporary.

    Columns [0, cols) are inputs; a temporary made from pair (a, b) becomes column cols + t.
    Returns each row's remaining column list and each temporary's pair.
    """
    rows, cols = bits.shape
    max_cols = cols + min(int(bits.sum()) // 2 + 1, 1024)
    mat = np.zeros((rows, max_cols), dtype=np.int32)
    mat[:, :cols] = bits
    counts = mat[:, :cols].T @ mat[:, :cols]
    pair_counts = np.zeros((max_cols, max_cols), dtype=np.int32)
    pair_counts[:cols, :cols] = counts
    np.fill_diagonal(pair_counts, 0)
    temps: list[tuple[int, int]] = []
    width = cols
    while width < max_cols:
        flat = int(np.argmax(pair_counts[:width, :width]))
        a, b = divmod(flat, width)
        if pair_counts[a, b] < 2:
            break
        affected = np.flatnonzero(mat[:, a] & mat[:, b])
        mat[affected, a] = 0
        mat[affected, b] = 0
        rest = mat[affected, :width].sum(axis=0)
        t = width
        pair_counts[a, :width] -= rest
        pair_counts[:width, a] -= rest
        pair_counts[b, :width] -= rest
        pair_counts[:width, b] -= rest
        pair_counts[a, b] -= affected.size
        pair_counts[b, a] -= affected.size
        pair_counts[t, :width] = rest
        pair_counts[:width, t] = rest
        mat[affected, t] = 1
        temps.append((a, b))
        width += 1
    return [list(np.flatnonzero(r[:width])) for r in mat], temps


def _schedule(
    rows: int, cols: int, row_sets: list[list[int]], temps: list[tuple[int, int]]
) -> XorProgram:
    """Order the ops so each temporary is made just before first use, and reuse its buffer after
    its last use (few live temporaries keep a block inside the cache)."""
    out_base = cols
    order: list[tuple[str, int]] = []  # ("t", temp) or ("o", output row)
    made: set[int] = set()

    def need(column: int) -> None:
        if column < cols or column in made:
            return
        a, b = temps[column - cols]
        need(a)
        need(b)
        made.add(column)
        order.append(("t", column))

    for r, members in enumerate(row_sets):
        for column in members:
            need(column)
        order.append(("o", r))

    last_use: dict[int, int] = {}
    for step, (kind, idx) in enumerate(order):
        sources = temps[idx - cols] if kind == "t" else row_sets[idx]
        for column in sources:
            if column >= cols:
                last_use[column] = step

    temp_base = cols + rows
    free: list[int] = []
    buffer_of: dict[int, int] = {}
    buffers = 0
    ops: list[tuple[int, ...]] = []

    def slot(column: int) -> int:
        return column if column < cols else temp_base + buffer_of[column]

    for step, (kind, idx) in enumerate(order):
        sources = list(temps[idx - cols]) if kind == "t" else row_sets[idx]
        source_slots = [slot(c) for c in sources]
        for column in sources:  # release before allocating: dst may reuse a dying source's buffer
            if column >= cols and last_use[column] == step:
                free.append(buffer_of[column])
        if kind == "t":
            if free:  # exact aliasing of dst and a dying source is safe for an elementwise XOR
                buffer_of[idx] = free.pop()
            else:
                buffer_of[idx] = buffers
                buffers += 1
            dst = temp_base + buffer_of[idx]
        else:
            dst = out_base + idx
        if not source_slots:
            ops.append((ZERO, dst))
        elif len(source_slots) == 1:
            ops.append((COPY, dst, source_slots[0]))
        else:
            ops.append((XOR3, dst, source_slots[0], source_slots[1]))
            ops.extend((ACC, dst, s) for s in source_slots[2:])
    return XorProgram(cols, rows, buffers, tuple(ops))

