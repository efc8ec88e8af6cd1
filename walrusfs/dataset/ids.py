"""The dataset ID and its text form (docs/datasets.md, "The ID").

The ID is 32 bytes: blake3 of a domain and the manifest's header, which covers the root of the hash
tree over every entry. Its text form is ``wds1`` (format version 1) followed by 58 characters of
lowercase base32 (RFC 4648 alphabet, no padding) of the 32 bytes and a 4-byte checksum, so a
truncated or mistyped ID is refused before anything is asked of the network.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import blake3

ID_VERSION = 1
PREFIX = f"wds{ID_VERSION}"
DIGEST_SIZE = 32
CHECK_SIZE = 4
TEXT_LENGTH = len(PREFIX) + 58  # base32 of 36 bytes: 57.6 characters, so 58 without padding
_ID_DOMAIN = b"walrusfs-dataset-id\0"
_CHECK_DOMAIN = b"walrusfs-dataset-id-check\0"


class DatasetIdError(ValueError):
    """Text that is not a dataset ID this walrusfs reads; the message says why."""


def _check(version: int, digest: bytes) -> bytes:
    return blake3.blake3(_CHECK_DOMAIN + bytes([version]) + digest).digest(CHECK_SIZE)


@dataclass(frozen=True)
class DatasetId:
    digest: bytes
    version: int = ID_VERSION

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise DatasetIdError(f"a dataset ID is {DIGEST_SIZE} bytes, got {len(self.digest)}")

    @classmethod
    def of_header(cls, header: bytes) -> DatasetId:
        """The ID of a manifest whose canonical header is ``header``."""
        return cls(blake3.blake3(_ID_DOMAIN + header).digest())

    def __str__(self) -> str:
        body = base64.b32encode(self.digest + _check(self.version, self.digest)).decode().rstrip("=").lower()
        return f"wds{self.version}{body}"

    @classmethod
    def parse(cls, text: str) -> DatasetId:
        text = text.strip()
        if not text.startswith("wds"):
            raise DatasetIdError(f"{text[:70]!r} is not a dataset ID: a dataset ID starts with 'wds' and a "
                                 "format version (wds1...)")
        version_text = text[3:4]
        if version_text != str(ID_VERSION):
            raise DatasetIdError(f"dataset ID format {text[:4]!r} is not one this walrusfs reads (it reads "
                                 f"{PREFIX}): upgrade walrusfs")
        if len(text) != TEXT_LENGTH:
            raise DatasetIdError(f"a {PREFIX} dataset ID is {TEXT_LENGTH} characters, {text[:70]!r} has "
                                 f"{len(text)}: it was {'truncated' if len(text) < TEXT_LENGTH else 'extended'} "
                                 "on the way; copy it whole")
        body = text[len(PREFIX):]
        try:
            raw = base64.b32decode(body.upper() + "======")
        except (binascii.Error, ValueError):
            raise DatasetIdError(f"{text!r} is not a dataset ID: after '{PREFIX}' only the letters a-z and the "
                                 "digits 2-7 occur") from None
        digest, check = raw[:DIGEST_SIZE], raw[DIGEST_SIZE:]
        dataset = cls(digest, ID_VERSION)
        if check != _check(ID_VERSION, digest) or str(dataset) != text:
            raise DatasetIdError(f"{text!r} fails its checksum: a character was changed on the way; copy the "
                                 "ID again from where it was published")
        return dataset


__all__ = ["DatasetId", "DatasetIdError", "ID_VERSION", "PREFIX"]
