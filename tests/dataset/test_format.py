"""The dataset format in-process (docs/datasets.md): what the ID covers, its text form, and that the
manifest's parts are refused when they do not hash to what covers them."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import blake3
import pytest

from walrusfs import cli
from walrusfs.dataset.fetch import check_index
from walrusfs.dataset.ids import DatasetId, DatasetIdError
from walrusfs.dataset.index import Extent, Index, PageRef, decode_locations, encode_locations
from walrusfs.dataset.manifest import (
    Entry,
    Header,
    Kind,
    ManifestError,
    build,
    decode_page,
    merkle_root,
)
from walrusfs.dataset.scan import scan
from walrusfs.redstuff import BlobId


def make_tree(root: Path) -> Path:
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "docs" / "b.bin").write_bytes(bytes(range(256)) * 40)
    (root / "docs" / "deep" / "empty").write_bytes(b"")
    (root / "docs" / "copy.txt").write_bytes(b"alpha\n")
    os.symlink("../a.txt", root / "docs" / "link")
    os.chmod(root / "docs" / "b.bin", 0o640)
    return root


def dataset_of(root: Path, times: bool = False, name: str = "") -> DatasetId:
    return build((item.entry for item in scan(root, times)), name, times).dataset_id


def test_the_same_tree_in_two_places_gives_one_id(tmp_path):
    first = make_tree(tmp_path / "one")
    second = make_tree(tmp_path / "two")
    os.utime(second / "a.txt", (1, 1))  # times are not covered unless asked for
    assert dataset_of(first) == dataset_of(second)
    assert dataset_of(first, times=True) != dataset_of(second, times=True)


@pytest.mark.parametrize("change", ["one byte", "one mode bit", "a rename", "a symlink target", "a new empty dir",
                                    "the name"])
def test_any_change_gives_another_id(tmp_path, change):
    root = make_tree(tmp_path / "tree")
    before = dataset_of(root)
    name = ""
    if change == "one byte":
        data = bytearray((root / "docs" / "b.bin").read_bytes())
        data[5000] ^= 1
        (root / "docs" / "b.bin").write_bytes(bytes(data))
    elif change == "one mode bit":
        os.chmod(root / "docs" / "b.bin", 0o644)
    elif change == "a rename":
        os.rename(root / "a.txt", root / "b.txt")
        os.rename(root / "docs" / "link", root / "docs" / "link2")
        os.symlink("../a.txt", root / "docs" / "link")
        os.rename(root / "b.txt", root / "a.txt")
        os.rename(root / "docs" / "link2", root / "docs" / "link3")
    elif change == "a symlink target":
        os.unlink(root / "docs" / "link")
        os.symlink("../a.txt ", root / "docs" / "link")
    elif change == "a new empty dir":
        (root / "docs" / "more").mkdir()
    else:
        name = "v2"
    assert dataset_of(root, name=name) != before


def test_the_id_is_what_the_document_says(tmp_path):
    """An independent reading of docs/datasets.md: records, pages, Merkle roots, header, ID, text form."""
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"xyz")
    os.chmod(root / "d", 0o750)
    os.chmod(root / "d" / "f", 0o600)
    os.symlink("d/f", root / "l")

    def h(data: bytes) -> bytes:
        return blake3.blake3(data).digest()

    records = [  # sorted by path bytes: "d" < "d/f" < "l"
        struct.pack("<BIQH", 1, 0o750, 0, 1) + b"d",
        struct.pack("<BIQH", 2, 0o600, 3, 3) + b"d/f" + h(b"xyz"),
        struct.pack("<BIQH", 3, 0o777, 3, 1) + b"l" + struct.pack("<H", 3) + b"d/f",
    ]
    leaves = [h(b"\0" + record) for record in records]
    page_root = h(b"\1" + h(b"\1" + leaves[0] + leaves[1]) + leaves[2])  # the odd last leaf moves up
    tree_root = page_root  # one page: its root is the tree's
    header = (b"WDSM" + struct.pack("<BBQQQI", 1, 0, 3, 1, 3, 1024) + struct.pack("<H", 4) + b"demo" + tree_root)
    digest = h(b"walrusfs-dataset-id\0" + header)
    import base64

    check = h(b"walrusfs-dataset-id-check\0" + b"\1" + digest)[:4]
    text = "wds1" + base64.b32encode(digest + check).decode().rstrip("=").lower()

    manifest = build((item.entry for item in scan(root)), name="demo")
    assert manifest.encoded_pages[0] == b"WDSP" + struct.pack("<BI", 1, 3) + b"".join(
        struct.pack("<I", len(r)) + r for r in records)
    assert manifest.header.encode() == header
    assert str(manifest.dataset_id) == text and len(text) == 62


def test_an_id_survives_only_whole(tmp_path):
    dataset = dataset_of(make_tree(tmp_path / "tree"))
    text = str(dataset)
    assert DatasetId.parse(text) == dataset
    with pytest.raises(DatasetIdError, match="truncated"):
        DatasetId.parse(text[:-1])
    with pytest.raises(DatasetIdError, match="checksum"):
        DatasetId.parse(text[:10] + ("a" if text[10] != "a" else "b") + text[11:])
    with pytest.raises(DatasetIdError, match="upgrade walrusfs"):
        DatasetId.parse("wds2" + text[4:])
    with pytest.raises(DatasetIdError, match="a-z and the digits 2-7"):
        DatasetId.parse(text[:-1] + "1")
    with pytest.raises(DatasetIdError, match="starts with 'wds'"):
        DatasetId.parse(str(BlobId(bytes(32))))


@pytest.mark.parametrize("broken", ["truncated", "one character changed"])
def test_verify_refuses_a_broken_id_before_asking_the_network(tmp_path, capsys, broken):
    text = str(dataset_of(make_tree(tmp_path / "tree")))
    text = text[:-3] if broken == "truncated" else text[:20] + ("q" if text[20] != "q" else "r") + text[21:]
    missing = tmp_path / "no-committee.toml"  # never read: the ID is refused first
    assert cli.main(["dataset", "verify", text, "--committee", str(missing)]) == 2
    assert ("truncated" if broken == "truncated" else "checksum") in capsys.readouterr().err


def test_a_page_is_refused_unless_it_hashes_to_its_root(tmp_path):
    manifest = build(item.entry for item in scan(make_tree(tmp_path / "tree")))
    entries, root = decode_page(manifest.encoded_pages[0], times=False)
    assert root == manifest.page_roots[0] and tuple(entries) == manifest.pages[0]
    forged = bytearray(manifest.encoded_pages[0])
    forged[-1] ^= 1  # the last entry's last byte (a symlink target)
    assert decode_page(bytes(forged), times=False)[1] != manifest.page_roots[0]
    with pytest.raises(ManifestError):
        decode_page(manifest.encoded_pages[0][:-40], times=False)


def test_an_index_is_refused_unless_its_header_and_page_roots_hash_to_the_id(tmp_path):
    entries = [Entry(b"f%05d" % i, Kind.FILE, 0o644, 1, blake3.blake3(b"%d" % i).digest()) for i in range(2500)]
    manifest = build(entries)
    assert len(manifest.pages) == 3  # 1024 + 1024 + 452
    blob = BlobId(bytes(32))
    refs = [PageRef(root, len(page), Extent(blob, 0, 1), Extent(blob, 1, 1))
            for root, page in zip(manifest.page_roots, manifest.pages, strict=True)]
    index = Index(manifest.dataset_id, manifest.header.encode(), refs, {})
    assert check_index(manifest.dataset_id, Index.from_bytes(index.to_bytes())) == manifest.header

    other = build(entries[:-1])
    with pytest.raises(ManifestError, match="does not hash to the dataset ID"):
        check_index(manifest.dataset_id, Index(manifest.dataset_id, other.header.encode(), refs, {}))
    swapped = [refs[1], refs[0], refs[2]]
    with pytest.raises(ManifestError, match="do not hash to the tree root"):
        check_index(manifest.dataset_id, Index(manifest.dataset_id, manifest.header.encode(), swapped, {}))
    with pytest.raises(ManifestError, match="pages"):
        check_index(manifest.dataset_id, Index(manifest.dataset_id, manifest.header.encode(), refs[:2], {}))


def test_headers_and_locations_round_trip_and_refuse_what_they_do_not_know():
    header = Header(3, 2, 10, merkle_root([b"\1" * 32]), "name", True)
    assert Header.decode(header.encode()) == header
    with pytest.raises(ManifestError, match="upgrade walrusfs"):
        Header.decode(header.encode()[:4] + b"\x02" + header.encode()[5:])
    extents = [[Extent(BlobId(bytes(32)), 5, 7)], None, []]
    assert decode_locations(encode_locations(extents)) == extents
    with pytest.raises(ManifestError, match=r"'\.\.'"):
        Entry(b"a/../b", Kind.DIRECTORY, 0o755).encode(False)


def test_special_files_are_refused_by_name(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    os.mkfifo(root / "pipe")
    from walrusfs.errors import UserError

    with pytest.raises(UserError, match=r"pipe.*FIFO"):
        scan(root)


def test_ten_thousand_entries_build_and_check_in_well_under_a_second_each(tmp_path):
    import time

    entries = [Entry(b"d%02d/f%05d" % (i % 50, i), Kind.FILE, 0o644, i, blake3.blake3(b"%d" % i).digest())
               for i in range(10_000)] + [Entry(b"d%02d" % d, Kind.DIRECTORY, 0o755) for d in range(50)]
    started = time.monotonic()
    manifest = build(entries)
    for page, root in zip(manifest.encoded_pages, manifest.page_roots, strict=True):
        assert decode_page(page, times=False)[1] == root
    assert time.monotonic() - started < 10  # generous: ~0.3 s on an idle machine
    assert manifest.header.entries == 10_050 and len(manifest.pages) == 10


def test_scan_of_a_copy_matches_the_original(tmp_path):
    root = make_tree(tmp_path / "tree")
    shutil.copytree(root, tmp_path / "copy", symlinks=True)
    assert [i.entry for i in scan(root)] != [] and dataset_of(root) == dataset_of(tmp_path / "copy")
