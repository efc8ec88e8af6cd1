"""Read capabilities: one string that lets any machine read a filesystem, and nothing more.

A capability holds the filesystem ID (to find and verify its signed root records on the nodes)
and its read key (encryption.py: decrypts and verifies every block and snapshot). It does not
hold the filesystem's key, so its holder cannot sign a root record, and no writer key, so it
cannot store anything. Optionally it pins one snapshot.

Text form, version 1 (``walrusfs share`` prints it; ``mount -t walrusfs CAP DIR`` takes it)::

    walrusfs-ro1:<base32 of: 16 fs id | 32 read key | u64 snapshot + 1 (0: follow the latest) | 4 check>

base32 lowercase without padding (no characters that shells, URLs or fstab treat specially);
``check`` is the first 4 bytes of blake3 over the rest, so a truncated or mistyped capability is
refused before anything is mounted.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import blake3

from ..errors import UserError

PREFIX = "walrusfs-ro1:"
_BODY = struct.Struct("<16s32sQ")
_CHECK = 4
_TEXT_LENGTH = -(-(_BODY.size + _CHECK) * 8 // 5)  # base32 characters, no padding
_ALPHABET = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class CapabilityError(UserError):
    """Not a usable capability: the message says what is wrong with it."""


@dataclass(frozen=True)
class ReadCapability:
    fs_id: str  # 32 hex
    read_key: bytes  # 32 bytes
    snapshot: int | None = None  # None: the latest, following new ones

    def to_text(self) -> str:
        body = _BODY.pack(bytes.fromhex(self.fs_id), self.read_key, 0 if self.snapshot is None else self.snapshot + 1)
        raw = body + blake3.blake3(body).digest(_CHECK)
        return PREFIX + base64.b32encode(raw).decode().rstrip("=").lower()

    @classmethod
    def parse(cls, text: str) -> ReadCapability:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise CapabilityError(f"not a walrusfs read capability: it must start with {PREFIX!r}")
        encoded = text[len(PREFIX):].upper()
        if not set(encoded) <= _ALPHABET:
            raise CapabilityError("the read capability is damaged: it has characters that base32 does not use "
                                  "(copy it again, whole)")
        if len(encoded) != _TEXT_LENGTH:
            raise CapabilityError(f"the read capability is {'truncated' if len(encoded) < _TEXT_LENGTH else 'too long'}"
                                  f" ({len(encoded)} of {_TEXT_LENGTH} characters after {PREFIX!r}): copy it again, "
                                  "whole")
        try:
            raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
        except (binascii.Error, ValueError):
            raise CapabilityError("the read capability is damaged: it does not decode (copy it again, whole)") from None
        body, check = raw[:-_CHECK], raw[-_CHECK:]
        if blake3.blake3(body).digest(_CHECK) != check:
            raise CapabilityError("the read capability does not match its checksum: it was mistyped or damaged "
                                  "(copy it again, whole)")
        fs_id, read_key, snapshot = _BODY.unpack(body)
        return cls(fs_id.hex(), read_key, None if snapshot == 0 else snapshot - 1)


def is_capability(source: str) -> bool:
    return source.strip().startswith(PREFIX)


__all__ = ["PREFIX", "CapabilityError", "ReadCapability", "is_capability"]
