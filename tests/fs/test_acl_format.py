"""The ACL xattr format and its relation to the mode (walrusfs/fs/acl.py), without a mount."""

from __future__ import annotations

import struct

import pytest

from walrusfs.fs.acl import GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, Acl, AclError


def xattr(*entries: tuple[int, int, int], version: int = 2) -> bytes:
    return struct.pack("<I", version) + b"".join(struct.pack("<HHI", *e) for e in entries)


U = 0xFFFFFFFF
EXTENDED = xattr((USER_OBJ, 7, U), (USER, 6, 1000), (GROUP_OBJ, 5, U), (GROUP, 4, 50), (MASK, 6, U), (OTHER, 1, U))


def test_round_trip_and_the_mode_it_stands_for() -> None:
    acl = Acl.parse(EXTENDED)
    assert acl.to_bytes() == EXTENDED
    assert not acl.is_minimal
    assert acl.mode_bits() == 0o761  # the group class is the mask, not the owning group
    minimal = Acl.parse(xattr((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 0, U)))
    assert minimal.is_minimal and minimal.mode_bits() == 0o640
    assert minimal == Acl.from_mode(0o640)


def test_entries_in_any_order_are_put_in_the_kernels_order() -> None:
    shuffled = xattr((OTHER, 1, U), (GROUP, 4, 50), (USER, 6, 1000), (MASK, 6, U), (GROUP_OBJ, 5, U), (USER_OBJ, 7, U))
    assert Acl.parse(shuffled).to_bytes() == EXTENDED


def test_chmod_sets_owner_mask_and_other_and_keeps_named_entries() -> None:
    after = Acl.parse(EXTENDED).with_mode(0o604)
    assert after.mode_bits() == 0o604
    assert after.to_bytes() == xattr((USER_OBJ, 6, U), (USER, 6, 1000), (GROUP_OBJ, 5, U), (GROUP, 4, 50),
                                     (MASK, 0, U), (OTHER, 4, U))


def test_a_default_acl_is_cut_to_the_creating_mode() -> None:
    inherited = Acl.parse(EXTENDED).masked_by(0o644)
    assert inherited.mode_bits() == 0o640  # owner rw-, mask r--, other ---
    assert inherited.to_bytes() == xattr((USER_OBJ, 6, U), (USER, 6, 1000), (GROUP_OBJ, 5, U), (GROUP, 4, 50),
                                         (MASK, 4, U), (OTHER, 0, U))


@pytest.mark.parametrize("value, why", [
    (b"", "header"),
    (xattr((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U), version=1), "version"),
    (xattr((USER_OBJ, 7, U), (GROUP_OBJ, 5, U)), "exactly one"),
    (xattr((USER_OBJ, 7, U), (USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)), "exactly one"),
    (xattr((USER_OBJ, 7, U), (USER, 7, 5), (GROUP_OBJ, 5, U), (OTHER, 0, U)), "needs a mask"),
    (xattr((USER_OBJ, 7, U), (USER, 7, 5), (USER, 1, 5), (GROUP_OBJ, 5, U), (MASK, 7, U), (OTHER, 0, U)), "twice"),
    (xattr((USER_OBJ, 8, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)), "beyond rwx"),
    (xattr((USER_OBJ, 7, U), (0x40, 5, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)), "unknown"),
    (xattr((USER_OBJ, 7, U), (GROUP_OBJ, 5, U), (OTHER, 0, U)) + b"x", "8-byte entries"),
])
def test_invalid_acls_are_refused(value: bytes, why: str) -> None:
    with pytest.raises(AclError, match=why):
        Acl.parse(value)
