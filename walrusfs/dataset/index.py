"""Where a dataset's pages and bytes live: the index, the location pages and the locator record
(docs/datasets.md, "Where the bytes live"). None of this is covered by the ID, so the same tree
published twice, packed differently, keeps one ID; a reader checks everything here against what
the ID covers (page roots against the tree root, file bytes against content hashes).

JSON, versioned (``"version": 1``); readers refuse a version they do not know.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..keys import public_bytes
from ..protocol.certificates import Certificate
from ..redstuff import BlobId, FormatError
from .ids import DatasetId

INDEX_FORMAT = "walrusfs-dataset-index"
LOCATIONS_FORMAT = "walrusfs-dataset-locations"
INDEX_VERSION = 1
_LOCATOR_DOMAIN = b"walrusfs-dataset-locator\0"
_SIGNATURE_DOMAIN = b"walrusfs-dataset-signature\0"


class IndexFormatError(ValueError):
    """An index or location page that is malformed (the message says what)."""


@dataclass(frozen=True)
class Extent:
    """``length`` bytes at ``offset`` of blob ``blob``."""

    blob: BlobId
    offset: int
    length: int

    def to_json(self) -> list:
        return [str(self.blob), self.offset, self.length]

    @classmethod
    def from_json(cls, value: Any) -> Extent:
        try:
            blob, offset, length = value
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length)):
                raise ValueError("offset and length must be non-negative integers")
            return cls(BlobId.parse(blob), offset, length)
        except (TypeError, ValueError, FormatError) as error:
            raise IndexFormatError(f"not an extent [blob, offset, length]: {value!r:.100} ({error})") from None


@dataclass(frozen=True)
class PageRef:
    """A page of the manifest: its root, how many entries, where its bytes and its locations are."""

    root: bytes
    entries: int
    content: Extent
    locations: Extent

    def to_json(self) -> dict:
        return {"root": self.root.hex(), "entries": self.entries, "content": self.content.to_json(),
                "locations": self.locations.to_json()}

    @classmethod
    def from_json(cls, value: Any) -> PageRef:
        try:
            root = bytes.fromhex(value["root"])
            if len(root) != 32 or not isinstance(value["entries"], int):
                raise ValueError("a page root is 32 bytes of hex and entries a number")
            return cls(root, value["entries"], Extent.from_json(value["content"]), Extent.from_json(value["locations"]))
        except (KeyError, TypeError, ValueError) as error:
            raise IndexFormatError(f"not a page reference: {error}") from None


@dataclass
class Index:
    dataset: DatasetId
    header: bytes
    pages: list[PageRef]
    certificates: dict[BlobId, Certificate]
    signatures: list[tuple[bytes, bytes]] = field(default_factory=list)  # (public key, signature)
    encryption: str = "none"

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": INDEX_FORMAT, "version": INDEX_VERSION, "dataset": str(self.dataset),
            "header": base64.b64encode(self.header).decode(), "encryption": self.encryption,
            "pages": [page.to_json() for page in self.pages],
            "certificates": {str(blob): json.loads(certificate.to_json())
                             for blob, certificate in sorted(self.certificates.items(), key=lambda kv: str(kv[0]))},
            "signatures": [{"public_key": base64.b64encode(key).decode(), "signature": base64.b64encode(sig).decode()}
                           for key, sig in self.signatures],
        }, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> Index:
        try:
            value = json.loads(bytes(data))
            if value.get("format") != INDEX_FORMAT:
                raise IndexFormatError("not a dataset index (no 'format': 'walrusfs-dataset-index')")
            if value.get("version") != INDEX_VERSION:
                raise IndexFormatError(f"dataset index version {value.get('version')!r} is not one this walrusfs reads "
                                  f"({INDEX_VERSION}): upgrade walrusfs")
            if value.get("encryption") != "none":
                raise IndexFormatError(f"dataset index encryption {value.get('encryption')!r}: this walrusfs reads "
                                  "public datasets only (encryption 'none'): upgrade walrusfs")
            certificates = {}
            for blob, certificate in value["certificates"].items():
                parsed = Certificate.from_json(json.dumps(certificate))
                if str(parsed.blob_id) != blob:
                    raise IndexFormatError(f"the certificate listed for blob {blob} is for {parsed.blob_id}")
                certificates[parsed.blob_id] = parsed
            signatures = [(base64.b64decode(s["public_key"], validate=True),
                           base64.b64decode(s["signature"], validate=True)) for s in value.get("signatures", [])]
            return cls(DatasetId.parse(value["dataset"]), base64.b64decode(value["header"], validate=True),
                       [PageRef.from_json(page) for page in value["pages"]], certificates, signatures)
        except IndexFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, FormatError) as error:
            raise IndexFormatError(f"malformed dataset index: {error}") from None


def encode_locations(files: list[list[Extent] | None]) -> bytes:
    """A page's locations: per entry of the page, in order, a file's extents (null for the others)."""
    return json.dumps({"format": LOCATIONS_FORMAT, "version": INDEX_VERSION,
                       "files": [None if extents is None else [e.to_json() for e in extents] for extents in files]},
                      separators=(",", ":")).encode()


def decode_locations(data: bytes | memoryview) -> list[list[Extent] | None]:
    try:
        value = json.loads(bytes(data))
        if value.get("format") != LOCATIONS_FORMAT or value.get("version") != INDEX_VERSION:
            raise IndexFormatError(f"not a version-{INDEX_VERSION} dataset location page")
        return [None if extents is None else [Extent.from_json(e) for e in extents] for extents in value["files"]]
    except IndexFormatError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        raise IndexFormatError(f"malformed dataset location page: {error}") from None


def locator_key(dataset: DatasetId) -> Ed25519PrivateKey:
    """The key of the dataset's locator record: derived from the ID alone, so anyone who holds the ID
    finds (and can write) the record; what it points to is checked against the ID, never trusted."""
    return Ed25519PrivateKey.from_private_bytes(
        blake3.blake3(_LOCATOR_DOMAIN + bytes([dataset.version]) + dataset.digest).digest())


def signed_bytes(dataset: DatasetId) -> bytes:
    return _SIGNATURE_DOMAIN + bytes([dataset.version]) + dataset.digest


def sign(dataset: DatasetId, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    return public_bytes(key), key.sign(signed_bytes(dataset))


def signature_valid(dataset: DatasetId, public_key: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, signed_bytes(dataset))
    except (InvalidSignature, ValueError):
        return False
    return True


__all__ = ["Extent", "Index", "IndexFormatError", "PageRef", "decode_locations", "encode_locations", "locator_key",
           "sign", "signature_valid"]
