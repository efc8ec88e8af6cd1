"""Datasets on a real 7-node network (n=7, f=2), through the command a user runs: publish, verify on a
fresh machine state with only the committee file, get, diff; nodes down, lying, or no longer holding a
blob; forged manifests. Every test leaves every node running."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from blobtools import blob_client, run, systematic_holders
from network import LyingProxy, down

from walrusfs.client.roots import publish_root
from walrusfs.dataset.fetch import BlobCache, Sightings, load_page, locate
from walrusfs.dataset.ids import DatasetId
from walrusfs.dataset.index import Extent, Index, PageRef, locator_key
from walrusfs.dataset.manifest import Entry, build, encode_page
from walrusfs.keys import generate_key, public_key_text, write_key
from walrusfs.protocol.roots import RootRecord
from walrusfs.redstuff import BlobId


def walrusfs(*args: str, home: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if home is not None:
        env["WALRUSFS_HOME"] = str(home)
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", *args], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def make_tree(root: Path, big: int = 700_000) -> Path:
    (root / "data" / "nested").mkdir(parents=True)
    (root / "README").write_text("a dataset\n")
    (root / "data" / "big.bin").write_bytes(os.urandom(big))
    (root / "data" / "nested" / "small.txt").write_text("small\n")
    (root / "data" / "nested" / "same.txt").write_text("small\n")
    (root / "data" / "empty").write_bytes(b"")
    os.symlink("../README", root / "data" / "readme-link")
    os.chmod(root / "data" / "nested" / "small.txt", 0o600)
    return root


def publish(net, tree: Path, *extra: str) -> str:
    result = walrusfs("dataset", "publish", str(tree), "--committee", str(net.committee_path),
                      "--writer-key", str(net.writer_key_path), *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def only_committee(net, tmp_path: Path) -> Path:
    """A fresh machine's view: a committee file in a directory of its own, nothing else."""
    path = tmp_path / "fresh" / "committee.toml"
    path.parent.mkdir(parents=True)
    shutil.copy(net.committee_path, path)
    return path


def verify(committee: Path, dataset: str, *extra: str, home: Path | None = None) -> tuple[int, dict]:
    result = walrusfs("dataset", "verify", dataset, "--committee", str(committee), "--json", *extra, home=home)
    return result.returncode, json.loads(result.stdout)


def tree_listing(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = os.readlink(path) if path.is_symlink() else None if path.is_dir() else path.read_bytes()
        out[str(path.relative_to(root))] = (info.st_mode, content)
    return out


@pytest.fixture(scope="module")
def published(shared_network, tmp_path_factory):
    """One tree published once: (its directory, its ID)."""
    tree = make_tree(tmp_path_factory.mktemp("published") / "tree")
    return tree, publish(shared_network, tree)


def test_the_same_tree_from_two_directories_gives_one_id_and_verifies_on_a_fresh_state(
        shared_network, published, tmp_path):
    tree, dataset = published
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    assert publish(shared_network, copy) == dataset
    home = tmp_path / "fresh-home"  # nothing there: verify needs no local state and writes none
    code, report = verify(only_committee(shared_network, tmp_path), dataset, home=home)
    assert code == 0, report
    assert report["ok"] and report["problems"] == [] and report["liars"] == {}
    assert report["files"] == report["files_checked"] == 5 and report["entries"] == 8
    assert report["bytes_checked"] == report["file_bytes"] == 700_000 + 10 + 6 + 6
    assert not home.exists()

    code, sampled = verify(only_committee(shared_network, tmp_path / "again"), dataset, "--sample", "0.4")
    assert code == 0 and sampled["files_checked"] == 2  # ceil(0.4 x 5 files)
    assert sampled["confidence"].startswith("2 of 5 files read and hashed: with 99% confidence fewer than 90.0%")


def test_get_writes_back_the_identical_tree(shared_network, published, tmp_path):
    tree, dataset = published
    result = walrusfs("dataset", "get", dataset, str(tmp_path / "out"), "--committee",
                      str(only_committee(shared_network, tmp_path)))
    assert result.returncode == 0, result.stderr
    assert tree_listing(tmp_path / "out") == tree_listing(tree)
    refused = walrusfs("dataset", "get", dataset, str(tmp_path / "out"), "--committee",
                       str(shared_network.committee_path))
    assert refused.returncode == 1 and "not an empty directory" in refused.stderr


def test_one_byte_one_mode_bit_and_a_rename_each_give_another_id_and_diff_names_them(
        shared_network, published, tmp_path):
    tree, dataset = published
    ids = {}
    for change in ("byte", "mode", "rename"):
        changed = tmp_path / change
        shutil.copytree(tree, changed, symlinks=True)
        if change == "byte":
            data = bytearray((changed / "data" / "big.bin").read_bytes())
            data[123_456] ^= 0x10
            (changed / "data" / "big.bin").write_bytes(bytes(data))
        elif change == "mode":
            os.chmod(changed / "data" / "nested" / "small.txt", 0o640)
        else:
            os.rename(changed / "data" / "nested" / "same.txt", changed / "data" / "nested" / "renamed.txt")
        ids[change] = publish(shared_network, changed)
    assert len({dataset, *ids.values()}) == 4

    def diff(first: str, second: str) -> tuple[int, dict]:
        result = walrusfs("dataset", "diff", first, second, "--json", "--committee", str(shared_network.committee_path))
        return result.returncode, json.loads(result.stdout)

    assert diff(dataset, ids["byte"]) == (1, {"added": [], "removed": [], "changed": {"data/big.bin": ["content"]}})
    assert diff(dataset, ids["mode"]) == (1, {"added": [], "removed": [],
                                              "changed": {"data/nested/small.txt": ["mode 600 -> 640"]}})
    assert diff(dataset, ids["rename"]) == (1, {"added": ["data/nested/renamed.txt"],
                                                "removed": ["data/nested/same.txt"], "changed": {}})
    assert diff(dataset, dataset) == (0, {"added": [], "removed": [], "changed": {}})


def test_verify_with_two_nodes_down(shared_network, published, tmp_path):
    _, dataset = published
    committee = only_committee(shared_network, tmp_path)
    with down(shared_network, "node-1", "node-4"):
        code, report = verify(committee, dataset)
    assert code == 0, report
    assert report["files_checked"] == 5 and report["problems"] == []
    assert sorted(report["unreachable"]) == ["node-1", "node-4"]


def test_verify_with_two_nodes_lying_names_the_liars(shared_network, published, tmp_path):
    net = shared_network
    _, dataset = published
    _, before = verify(net.committee_path, dataset)
    liars = systematic_holders(net.committee, BlobId.parse(before["index_blob"]))[:2]  # asked first, fresh client
    with LyingProxy(net.url(liars[0])) as first, LyingProxy(net.url(liars[1])) as second:
        committee = net.client_committee({liars[0]: first.url, liars[1]: second.url})
        code, report = verify(committee, dataset)
    assert code == 0, report
    assert sorted(report["liars"]) == sorted(liars)
    assert report["files_checked"] == 5 and report["problems"] == []
    text = walrusfs("dataset", "verify", dataset, "--committee", str(net.committee_path))
    assert text.returncode == 0 and "OK: every check holds" in text.stdout


def test_signed_by_the_publisher(shared_network, tmp_path):
    key_path, other_path = tmp_path / "publisher.key", tmp_path / "other.key"
    write_key(key_path, key := generate_key())
    write_key(other_path, generate_key())
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "paper.csv").write_text("x,y\n1,2\n")
    dataset = publish(shared_network, tree, "--sign", str(key_path), "--name", "paper data")
    code, report = verify(shared_network.committee_path, dataset, "--publisher", public_key_text(key))
    assert code == 0 and report["publisher"] == public_key_text(key) and report["name"] == "paper data"
    code, report = verify(shared_network.committee_path, dataset, "--publisher", str(other_path))
    assert code == 1 and report["problems"][0]["kind"] == "signature"


async def _located(net, dataset: str):
    async with blob_client(net) as client:
        cache = BlobCache(client, Sightings())
        located = await locate(client, DatasetId.parse(dataset), cache)
        pages = [await load_page(located, n, cache) for n in range(len(located.index.pages))]
        return located, pages


async def _point_locator_to(net, dataset: str, index: Index) -> None:
    """What anyone holding the ID can do: store an index and make the locator record name it."""
    async with blob_client(net) as client:
        stored = await client.store(index.to_bytes())
        now = time.time_ns()
        record = RootRecord.create(locator_key(DatasetId.parse(dataset)), now, stored.blob_id, now)
        await publish_root(client.connections, client.committee, record)


def test_a_forged_manifest_is_refused_and_republishing_restores_the_dataset(shared_network, tmp_path):
    net = shared_network
    tree = make_tree(tmp_path / "tree", big=50_000)
    dataset = publish(net, tree)
    located, pages = run(lambda: _located(net, dataset))

    # A page whose entry was altered (a mode made world-writable), listed under the honest page root.
    page = pages[0]
    forged_entries = [Entry(e.path, e.kind, 0o777 if e.path == b"README" else e.mode, e.size, e.content, e.target)
                      for e in page.entries]
    forged_page = encode_page([e.encode(False) for e in forged_entries])

    async def store_page():
        async with blob_client(net) as client:
            return await client.store(forged_page)

    stored = trio.run(store_page)  # certified like any blob: the forger can store what it likes
    honest = located.index
    extent = Extent(stored.blob_id, 0, len(forged_page))
    forged = Index(honest.dataset, honest.header,
                   [PageRef(honest.pages[0].root, honest.pages[0].entries, extent, honest.pages[0].locations)],
                   {**honest.certificates, stored.blob_id: stored.certificate})
    run(lambda: _point_locator_to(net, dataset, forged))
    code, report = verify(net.committee_path, dataset)
    assert code == 1
    assert [(p["kind"], p["name"]) for p in report["problems"]] == [("manifest", "page 0")]
    assert "does not match its root" in report["problems"][0]["why"]

    # An index whose header is another tree's: refused outright, nothing of it believed.
    other = build(forged_entries)
    run(lambda: _point_locator_to(net, dataset, Index(honest.dataset, other.header.encode(), honest.pages,
                                                      honest.certificates)))
    result = walrusfs("dataset", "verify", dataset, "--committee", str(net.committee_path))
    assert result.returncode == 2
    assert "no manifest on the network matches" in result.stderr and "does not hash to the dataset ID" in result.stderr

    assert publish(net, tree) == dataset  # anyone holding the tree publishes it again under the same ID
    assert verify(net.committee_path, dataset)[0] == 0


def _repair(net, node: str, enabled: bool) -> None:
    path = net.config(node)
    text = path.read_text().split("[repair]")[0].rstrip() + "\n"
    if not enabled:
        text += "\n[repair]\nenabled = false\n"
    path.write_text(text)


def test_a_blob_no_longer_held_by_f_plus_1_nodes_fails_naming_its_files(shared_network, tmp_path):
    net = shared_network
    tree = tmp_path / "tree"
    (tree / "lost").mkdir(parents=True)
    (tree / "lost" / "a.bin").write_bytes(os.urandom(1_500_000))  # read in 1 MiB chunks, stored as one extent
    (tree / "lost" / "b.bin").write_bytes(os.urandom(300_000))
    dataset = publish(net, tree)
    _, pages = run(lambda: _located(net, dataset))
    files = [extents for extents in pages[0].locations if extents is not None]
    assert [[(e.offset, e.length) for e in extents] for extents in files] == [[(0, 1_500_000)], [(1_500_000, 300_000)]]
    data_blob = files[0][0].blob
    victims = net.node_ids[:3]  # f + 1
    net.stop(*victims)
    try:
        for node in victims:
            _repair(net, node, enabled=False)  # they stay without it
            for path in (net.root / node / "data" / "blobs").rglob(f"{data_blob}/p*.*"):
                path.unlink()
        net.start(*victims)
        code, report = verify(net.committee_path, dataset)
        assert code == 1, report
        [problem] = report["problems"]
        assert problem["kind"] == "blob" and problem["name"] == str(data_blob)
        assert "under-stored" in problem["why"] and "lost/a.bin" in problem["why"] and "lost/b.bin" in problem["why"]
        assert all(node in problem["why"] for node in victims)
        code, sampled = verify(net.committee_path, dataset, "--sample", "0.01")  # holders are asked in full
        assert code == 1 and [p["name"] for p in sampled["problems"]] == [str(data_blob)]
    finally:
        net.stop(*victims)
        for node in victims:
            _repair(net, node, enabled=True)
        net.start(*victims)


def test_ten_thousand_files_publish_and_verify_in_seconds(shared_network, tmp_path):
    tree = tmp_path / "many"
    for d in range(20):
        (tree / f"d{d:02}").mkdir(parents=True)
        for f in range(500):
            (tree / f"d{d:02}" / f"f{f:03}").write_bytes(b"%d/%d\n" % (d, f))
    started = time.monotonic()
    dataset = publish(shared_network, tree)
    published_in = time.monotonic() - started
    code, report = verify(shared_network.committee_path, dataset)
    assert code == 0 and report["files_checked"] == 10_000 and report["entries"] == 10_020
    print(f"10,000 files: publish {published_in:.1f} s, verify {report['seconds']:.1f} s")
    assert published_in < 120 and report["seconds"] < 120  # generous: seconds each on an idle machine


def test_get_never_writes_through_a_link_a_hostile_publisher_put_above_a_file(shared_network, tmp_path):
    import blake3

    from walrusfs.dataset.manifest import Kind
    from walrusfs.dataset.publish import publish_scanned
    from walrusfs.dataset.scan import Scanned

    outside = tmp_path / "outside"
    outside.mkdir()
    payload = tmp_path / "payload"
    payload.write_bytes(b"written where it should not be\n")
    digest = blake3.blake3(payload.read_bytes()).digest()
    size = payload.stat().st_size
    hostile = [  # a manifest walrusfs never publishes, but anyone can
        Scanned(Entry(b"a", Kind.SYMLINK, 0o777, len(bytes(outside)), target=bytes(outside)), payload),
        Scanned(Entry(b"a/b", Kind.FILE, 0o644, size, digest), payload),
        Scanned(Entry(b"c", Kind.FILE, 0o644, size, digest), payload),
    ]

    async def go() -> str:
        async with blob_client(shared_network) as client:
            return str((await publish_scanned(client, hostile)).dataset)

    dataset = run(go)
    dest = tmp_path / "dest"
    result = walrusfs("dataset", "get", dataset, str(dest), "--committee", str(shared_network.committee_path))
    assert result.returncode == 1
    assert "FAILED a/b: a path above it is not a directory" in result.stderr
    assert list(outside.iterdir()) == []
    assert (dest / "a").is_symlink() and (dest / "c").read_bytes() == payload.read_bytes()
