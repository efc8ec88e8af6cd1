"""Ed25519 keys: generating, storing and loading them, and their base64 text form.

A key file holds the 32-byte private seed as one line of standard base64, mode 0600. Public keys
travel as standard base64 of their 32 raw bytes (in committee files and Authorization headers).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .errors import UserError

KEY_SIZE = 32


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    return base64.b64encode(public_bytes(key)).decode()


def decode_public_key(text: str) -> bytes:
    """Raw public key bytes from base64 text; ValueError with the reason if it is not one."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:60]!r} is not base64") from None
    if len(raw) != KEY_SIZE:
        raise ValueError(f"an ed25519 public key is {KEY_SIZE} bytes, {text[:60]!r} decodes to {len(raw)}")
    Ed25519PublicKey.from_public_bytes(raw)  # rejects nothing of the right size, but stays honest
    return raw


def write_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a private key file readable only by its owner; refuses to replace an existing one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(private_bytes(key)).decode() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        text = Path(path).read_text().strip()
    except OSError as error:
        raise UserError(f"cannot read key file {path}: {error.strerror}") from error
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != KEY_SIZE:
        raise UserError(
            f"key file {path} does not hold an ed25519 key (expected one line of base64 of 32 bytes)"
        )
    return Ed25519PrivateKey.from_private_bytes(seed)
