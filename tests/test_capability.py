"""Read capabilities (walrusfs/fs/capability.py): one string that names a filesystem and carries its
read key, and refuses to be used when truncated or mistyped. Pure functions: no processes."""

from __future__ import annotations

import os

import pytest

from walrusfs.fs.capability import PREFIX, CapabilityError, ReadCapability, is_capability
from walrusfs.fs.encryption import read_key_of
from walrusfs.keys import generate_key
from walrusfs.protocol.roots import fs_id_of_key

KEY = generate_key()


def capability(snapshot: int | None = None) -> ReadCapability:
    return ReadCapability(fs_id_of_key(KEY), read_key_of(KEY), snapshot)


@pytest.mark.parametrize("snapshot", [None, 0, 1, 41, 2**40])
def test_a_capability_survives_its_text(snapshot: int | None) -> None:
    text = capability(snapshot).to_text()
    assert text.startswith(PREFIX) and is_capability(text)
    assert text == text.lower() and " " not in text and "/" not in text and "," not in text  # fstab-safe
    assert ReadCapability.parse(text) == capability(snapshot)
    assert ReadCapability.parse(f"  {text}\n") == capability(snapshot)


def test_it_holds_no_signing_key() -> None:
    from walrusfs.keys import private_bytes
    text = capability().to_text()
    assert private_bytes(KEY).hex() not in ReadCapability.parse(text).read_key.hex()
    assert ReadCapability.parse(text).read_key != private_bytes(KEY)


@pytest.mark.parametrize(("damage", "complaint"), [
    (lambda t: t[:-5], "truncated"),
    (lambda t: t + "aaaaaaaa", "too long"),
    (lambda t: t[:-3] + ("b" if t[-3] != "b" else "c") + t[-2:], "checksum"),
    (lambda t: t[:20] + "!" + t[21:], "characters that base32 does not use"),
    (lambda t: "walrusfs-rw1:" + t[len(PREFIX):], "must start with"),
    (lambda t: "mydata", "must start with"),
])
def test_a_damaged_capability_is_refused_with_the_reason(damage, complaint: str) -> None:
    with pytest.raises(CapabilityError, match=complaint):
        ReadCapability.parse(damage(capability().to_text()))


def test_every_capability_of_another_filesystem_differs() -> None:
    other = generate_key()
    assert ReadCapability(fs_id_of_key(other), read_key_of(other)).to_text() != capability().to_text()
    assert ReadCapability(fs_id_of_key(KEY), os.urandom(32)).to_text() != capability().to_text()
