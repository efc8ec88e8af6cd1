"""RedStuff: the two-dimensional erasure code of Walrus, in two encoding types (GF(2^8) and GF(2^16),
see encodings.py and docs/redstuff-encodings.md), pure and free of I/O.

    encoded = encode(blob, n_shards)            # metadata + 2n slivers, encoding chosen by n
    encoded.metadata.blob_id                    # what the blob is known by
    verify_sliver(metadata, sliver)             # raises unless it is the committed sliver
    decode_and_verify(metadata, slivers)        # blob bytes from any quorum, consistency checked
    SliverExpansion(sliver).symbol_for(t)       # a proven recovery symbol for lost sliver t
    recover_sliver(metadata, kind, t, symbols)  # the lost sliver, from n_s or n_p symbols
"""

# The encoding types register themselves with codec.codec_for (codec.py imports no implementation).
from . import gf256codec, rs16codec  # noqa: F401
from .blob import BlobId, BlobMetadata
from .decode import (
    InconsistentBlobError,
    NotEnoughSliversError,
    SliverVerificationError,
    decode,
    decode_and_verify,
    verify_sliver,
)
from .encode import EncodedBlob, encode
from .geometry import (
    MAX_BLOB_LENGTH,
    BlobLayout,
    EncodingGeometry,
    GeometryError,
    ShardIndex,
    SliverPairIndex,
)
from .recovery import SliverExpansion, recover_sliver, verify_inconsistency_proof
from .sliver import InconsistencyProof, RecoverySymbol, Sliver, SliverKind
from .wire import FormatError

__all__ = [
    "MAX_BLOB_LENGTH",
    "BlobId",
    "BlobLayout",
    "BlobMetadata",
    "EncodedBlob",
    "EncodingGeometry",
    "FormatError",
    "GeometryError",
    "InconsistencyProof",
    "InconsistentBlobError",
    "NotEnoughSliversError",
    "RecoverySymbol",
    "ShardIndex",
    "Sliver",
    "SliverExpansion",
    "SliverKind",
    "SliverPairIndex",
    "SliverVerificationError",
    "decode",
    "decode_and_verify",
    "encode",
    "recover_sliver",
    "verify_inconsistency_proof",
    "verify_sliver",
]
