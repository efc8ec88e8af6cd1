"""The committee file and the protocol shared by client and nodes: signed requests, confirmations,
certificates. Pure functions: no processes."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import pytest

from walrusfs.committee import Committee, NodeInfo, round_robin_shards
from walrusfs.errors import UserError
from walrusfs.keys import generate_key, public_bytes, public_key_text
from walrusfs.protocol import (
    AuthError,
    Confirmation,
    ReplayGuard,
    is_certified,
    sign_request,
    verify_certificate,
    verify_request,
)
from walrusfs.redstuff import BlobId

NODE_KEYS = [generate_key() for _ in range(4)]
WRITER = generate_key()
BLOB = BlobId(bytes(range(32)))


def committee(n_shards: int = 7) -> Committee:
    nodes = tuple(NodeInfo(f"node-{i}", f"http://127.0.0.1:{9000 + i}", public_bytes(key), shards)
                  for i, (key, shards) in enumerate(zip(NODE_KEYS, round_robin_shards(4, n_shards), strict=True)))
    return Committee(3, n_shards, nodes, frozenset({public_bytes(WRITER)}))


def test_committee_round_trips_through_toml() -> None:
    original = committee()
    loaded = Committee.loads(original.dumps())
    assert loaded == original
    assert loaded.node_for_shard(5).id == "node-1"
    assert loaded.shards_of("node-0") == (0, 4)
    assert loaded.is_writer(public_bytes(WRITER)) and not loaded.is_writer(public_bytes(NODE_KEYS[0]))


@pytest.mark.parametrize(("edit", "complaint"), [
    (lambda t: t.replace("shards = [0, 4]", "shards = [0]"), "shards 4 are held by no node"),
    (lambda t: t.replace("shards = [0, 4]", "shards = [0, 4, 5]"), "shard 5 is held by both"),
    (lambda t: t.replace("shards = [0, 4]", "shards = [0, 4, 9]"), "shard 9 outside [0, 7)"),
    (lambda t: t.replace('id = "node-1"', 'id = "node-0"'), "appears twice"),
    (lambda t: t.replace("n_shards = 7", "n_shards = 2"), "n_shards"),
    (lambda t: t.replace('url = "http://127.0.0.1:9000"', 'url = "127.0.0.1"'), "must look like http://HOST:PORT"),
    (lambda t: t.replace(public_key_text(NODE_KEYS[0]), "bm90IGEga2V5"), "bad public key"),
    (lambda t: t.replace("epoch = 3", ""), "missing 'epoch'"),
    (lambda t: t + "[[nodes]\n", "not valid TOML"),
])
def test_a_bad_committee_file_is_refused_with_what_to_fix(edit, complaint: str) -> None:
    with pytest.raises(UserError, match=None) as caught:
        Committee.loads(edit(committee().dumps()))
    assert complaint in str(caught.value)


# --- signed requests --------------------------------------------------------------------------------------


def test_a_writer_signed_request_verifies_once() -> None:
    header = sign_request(WRITER, "PUT", "/v1/blobs/x/metadata")
    guard = ReplayGuard()
    assert verify_request(header, "PUT", "/v1/blobs/x/metadata", committee(), replay=guard) == public_bytes(WRITER)
    with pytest.raises(AuthError, match="replayed"):
        verify_request(header, "PUT", "/v1/blobs/x/metadata", committee(), replay=guard)


@pytest.mark.parametrize(("make_header", "method", "path", "complaint"), [
    (lambda: None, "PUT", "/a", "need an Authorization"),
    (lambda: "Bearer abc", "PUT", "/a", "scheme"),
    (lambda: sign_request(WRITER, "PUT", "/a"), "DELETE", "/a", "does not verify"),
    (lambda: sign_request(WRITER, "PUT", "/a"), "PUT", "/b", "does not verify"),
    (lambda: sign_request(WRITER, "PUT", "/a", now=time.time() - 310), "PUT", "/a", "clock"),
    (lambda: sign_request(WRITER, "PUT", "/a", now=time.time() + 310), "PUT", "/a", "clock"),
    (lambda: sign_request(WRITER, "PUT", "/a").replace('sig="', 'sig="AAAA'), "PUT", "/a", "wrong length"),
    (lambda: sign_request(WRITER, "PUT", "/a").replace('ts="', 'ts="x'), "PUT", "/a", "not well formed"),
])
def test_bad_authorisation_is_refused(make_header, method: str, path: str, complaint: str) -> None:
    with pytest.raises(AuthError, match=complaint):
        verify_request(make_header(), method, path, committee())


def test_a_key_that_is_not_a_writer_is_forbidden() -> None:
    with pytest.raises(AuthError) as caught:
        verify_request(sign_request(NODE_KEYS[0], "PUT", "/a"), "PUT", "/a", committee())
    assert caught.value.forbidden


# --- confirmations and certificates ---------------------------------------------------------------------


def confirm(i: int, blob_id: BlobId = BLOB, epoch: int = 3) -> Confirmation:
    c = committee()
    return Confirmation(epoch, blob_id, f"node-{i}", c.shards_of(f"node-{i}")).signed_by(NODE_KEYS[i])


def test_confirmation_survives_json_and_verifies_with_the_nodes_key() -> None:
    confirmation = Confirmation.from_json(confirm(2).to_json())
    assert confirmation == confirm(2) or confirmation.verify(public_bytes(NODE_KEYS[2]))
    assert confirmation.verify(public_bytes(NODE_KEYS[2]))
    assert not confirmation.verify(public_bytes(NODE_KEYS[1]))
    assert not replace(confirmation, shards=(2, 6, 1)).verify(public_bytes(NODE_KEYS[2]))


def test_certificate_counts_only_valid_confirmations_for_this_blob_and_epoch() -> None:
    c = committee()  # n = 7, f = 2, quorum 5; node-0 and node-1 hold 2 shards each, node-2 and node-3 one
    assert verify_certificate(c, BLOB, [confirm(0), confirm(1)]) == {0, 4, 1, 5}
    assert not is_certified(c, {0, 4, 1, 5})
    full = verify_certificate(c, BLOB, [confirm(0), confirm(1), confirm(2)])
    assert is_certified(c, full)
    forged = replace(confirm(2), node_id="node-3", shards=(3,))  # node-2's signature, node-3's name
    other_blob = confirm(2, blob_id=BlobId(bytes(32)))
    old_epoch = confirm(2, epoch=2)
    stranger = Confirmation(3, BLOB, "node-9", (2,)).signed_by(generate_key())
    claims_more = Confirmation(3, BLOB, "node-3", (3, 0)).signed_by(NODE_KEYS[3])
    covered = verify_certificate(c, BLOB, [confirm(0), confirm(1), forged, other_blob, old_epoch, stranger,
                                           claims_more])
    assert covered == {0, 4, 1, 5, 3}  # node-3 counts only for the shard it holds


def test_confirmation_json_is_versioned() -> None:
    text = confirm(0).to_json().replace('"version": 1', '"version": 2')
    with pytest.raises(ValueError, match="version 2"):
        Confirmation.from_json(text)
    assert base64.b64decode(Confirmation.from_json(confirm(0).to_json()).to_json().split('"signature": "')[1][:88])
