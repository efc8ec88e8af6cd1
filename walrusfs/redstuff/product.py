"""A GF(2^8) matrix applied to symbols, by whichever of the two engines is cheaper for the call.

Both engines compute the same bytes (the product on virtual field elements, see ``xorcode``):

- bit-sliced (``xorcode.XorProgram``): one numpy XOR per op per block of packets. Unbeatable for
  the small matrices of small committees and for large symbols, where every op moves kilobytes.
- table (``tablecode.TableProduct``): symbols converted to field elements, then one table gather per
  input over all outputs. Its cost does not depend on how many ones the bit matrices have, so it
  wins when a program has hundreds of thousands of ops over packets of a few words (n=256 and small
  blobs), where the bit-sliced engine would be nothing but call overhead.

The choice is made per call from a cost model (below, constants measured with numpy 2 on one core
of the development machine), and each engine is built only when first chosen: a huge XOR program
is never compiled for a code only ever used through the table engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import gf256, tablecode, xorcode

BITSLICED, TABLE = "bitsliced", "table"

# Bit-sliced engine: seconds per numpy call, bytes per second an XOR streams, seconds to slice one
# packet per block. Compiling (up to ~10 us per one in the bit matrix with pair elimination) is left
# out: it happens once per code, which lives for the process, and not at all if never chosen.
OP_SECONDS = 0.3e-6
XOR_BYTES_PER_SECOND = 20e9
SLICE_SECONDS = 0.3e-6
# Pair elimination leaves about half the XORs of the plain program (measured on Cauchy matrices).
PAIR_ELIMINATION_RATIO = 0.5
# Table engine: seconds per lookup-and-XOR (inputs x outputs x elements), per element converted
# (inputs and outputs), per numpy call.
LOOKUP_SECONDS = 0.75e-9
CONVERT_SECONDS = 3e-9
CALL_SECONDS = 2e-6


class MatrixProduct:
    """outputs = matrix @ inputs over GF(2^8), for symbols given as uint64 arrays of shape (..., 8, P).

    Same contract as ``XorProgram.run``: all symbols share one shape, outputs are overwritten, never
    read, and must not alias inputs.
    """

    def __init__(self, matrix: np.ndarray, *, eliminate_common_pairs: bool = True) -> None:
        self.matrix = np.array(matrix, dtype=np.int32)
        self.matrix.setflags(write=False)
        self.rows, self.cols = self.matrix.shape
        self.eliminate_common_pairs = eliminate_common_pairs
        self._ones = gf256.bit_ones(self.matrix)
        self._program: xorcode.XorProgram | None = None
        self._table: tablecode.TableProduct | None = None

    @property
    def program(self) -> xorcode.XorProgram:
        """The bit-sliced program, compiled on first use."""
        if self._program is None:
            self._program = xorcode.compile_matrix(
                self.matrix, eliminate_common_pairs=self.eliminate_common_pairs)
        return self._program

    @property
    def table(self) -> tablecode.TableProduct:
        if self._table is None:
            self._table = tablecode.TableProduct(self.matrix)
        return self._table

    def _uses_pairs(self) -> bool:
        return self.eliminate_common_pairs and 8 * self.cols <= xorcode.CSE_MAX_COLUMNS

    def _op_count(self) -> float:
        if self._program is not None:
            return len(self._program.ops)
        plain = max(self._ones - 8 * self.rows, 8 * self.rows)  # an output packet of r ones: r-1 XORs
        return plain * PAIR_ELIMINATION_RATIO if self._uses_pairs() else plain

    def bitsliced_seconds(self, shape: tuple[int, ...]) -> float:
        words = shape[-1]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
        block = max(64, xorcode.BLOCK_BYTES // (8 * max(batch, 1)))
        blocks = -(-words // block)
        bytes_per_op = 8 * batch * min(block, words)
        per_block = (self._op_count() * (OP_SECONDS + bytes_per_op / XOR_BYTES_PER_SECOND)
                     + 8 * (self.rows + self.cols) * SLICE_SECONDS)
        return blocks * per_block

    def table_seconds(self, shape: tuple[int, ...]) -> float:
        words = shape[-1]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
        elements = 64 * words * batch
        chunks = -(-words // max(1, tablecode.chunk_elements(self.rows) // (64 * max(batch, 1))))
        return (self.rows * self.cols * elements * LOOKUP_SECONDS
                + (self.rows + self.cols) * elements * CONVERT_SECONDS
                + chunks * (2 * self.cols + self.rows + 4) * CALL_SECONDS)

    def engine_for(self, shape: tuple[int, ...]) -> str:
        """The engine ``run`` uses for symbols of ``shape``."""
        return TABLE if self.table_seconds(shape) < self.bitsliced_seconds(shape) else BITSLICED

    def run(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], *,
            engine: str | None = None) -> None:
        """Compute the product with ``engine`` (BITSLICED or TABLE; by default the cheaper one)."""
        if len(inputs) != self.cols or len(outputs) != self.rows:
            raise ValueError(
                f"matrix takes {self.cols} inputs and {self.rows} outputs, got {len(inputs)} and {len(outputs)}"
            )
        if not outputs:
            return
        if engine is None:
            engine = self.engine_for(outputs[0].shape)
        if engine == TABLE:
            self.table.run(inputs, outputs)
        elif engine == BITSLICED:
            self.program.run(inputs, outputs)
        else:
            raise ValueError(f"unknown engine {engine!r}")
