"""The committee file and the protocol shared by client and nodes: signed requests, confirmations,
certificates. Pure functions: no processes."""

from __future__ import annotations

import base64
import re
import time
from dataclasses import replace

import pytest

from walrusfs.committee import Committee, NodeInfo, round_robin_shards
from walrusfs.errors import UserError
from walrusfs.keys import generate_key, public_bytes, public_key_text
from walrusfs.protocol import (
    AUTH_SCHEME,
    AuthError,
    Confirmation,
    ReplayGuard,
    body_digest,
    is_certified,
    sign_request,
    verify_certificate,
    verify_request,
)
from walrusfs.redstuff import BlobId
from walrusfs.tls import certificate_text, node_certificate

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


def node_0_shards(text: str, shards: str) -> str:
    """The committee text with node-0's shards (0 and 4, however the writer laid the array out) replaced."""
    edited, count = re.subn(r"shards = \[\s*0,\s*4,?\s*\]", f"shards = {shards}", text, count=1)
    assert count == 1, text
    return edited


@pytest.mark.parametrize(("edit", "complaint"), [
    (lambda t: node_0_shards(t, "[0]"), "shards 4 are held by no node"),
    (lambda t: node_0_shards(t, "[0, 4, 5]"), "shard 5 is held by both"),
    (lambda t: node_0_shards(t, "[0, 4, 9]"), "shard 9 outside [0, 7)"),
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


def tls_committee() -> Committee:
    """The committee with node-1 serving TLS with its certificate pinned."""
    base = committee()
    node1 = replace(base.node("node-1"), url="https://127.0.0.1:9001", tls_cert=node_certificate(NODE_KEYS[1]))
    return replace(base, nodes=(base.nodes[0], node1, *base.nodes[2:]))


def test_a_pinned_certificate_round_trips_and_files_without_one_still_load() -> None:
    loaded = Committee.loads(tls_committee().dumps())
    assert loaded == tls_committee()
    assert loaded.node("node-1").tls_cert == node_certificate(NODE_KEYS[1])  # the same bytes from the same key
    assert loaded.node("node-0").tls_cert is None and "tls_cert" not in committee().dumps()


@pytest.mark.parametrize(("edit", "complaint"), [
    (lambda t: t.replace(certificate_text(node_certificate(NODE_KEYS[1])),
                         certificate_text(node_certificate(NODE_KEYS[2]))), "certifies another key"),
    (lambda t: t.replace("https://127.0.0.1:9001", "http://127.0.0.1:9001"), "must be https://"),
    (lambda t: t.replace(certificate_text(node_certificate(NODE_KEYS[1])), "bm90IGEgY2VydA=="), "bad tls_cert"),
])
def test_a_bad_pinned_certificate_is_refused(edit, complaint: str) -> None:
    with pytest.raises(UserError, match=complaint):
        Committee.loads(edit(tls_committee().dumps()))


# --- signed requests --------------------------------------------------------------------------------------


def test_a_writer_signed_request_verifies_once() -> None:
    node = committee().node("node-1")
    header = sign_request(WRITER, "PUT", "/v1/blobs/x/metadata", node, b"body")
    guard = ReplayGuard()
    signed = verify_request(header, "PUT", "/v1/blobs/x/metadata", committee(), "node-1", replay=guard)
    assert signed.writer == public_bytes(WRITER)
    signed.check_body(b"body")
    with pytest.raises(AuthError, match="replayed"):
        verify_request(header, "PUT", "/v1/blobs/x/metadata", committee(), "node-1", replay=guard)


def sign(method: str = "PUT", path: str = "/a", node: str = "node-0", body: bytes | None = b"", **kw) -> str:
    return sign_request(WRITER, method, path, committee().node(node), body, **kw)


@pytest.mark.parametrize(("make_header", "method", "path", "complaint"), [
    (lambda: None, "PUT", "/a", "need an Authorization"),
    (lambda: "Bearer abc", "PUT", "/a", "scheme"),
    (lambda: sign(), "DELETE", "/a", "does not verify"),
    (lambda: sign(), "PUT", "/b", "does not verify"),
    (lambda: sign(now=time.time() - 310), "PUT", "/a", "clock"),
    (lambda: sign(now=time.time() + 310), "PUT", "/a", "clock"),
    (lambda: sign().replace('sig="', 'sig="AAAA'), "PUT", "/a", "wrong length"),
    (lambda: sign().replace('ts="', 'ts="x'), "PUT", "/a", "not well formed"),
    (lambda: sign(node="node-2"), "PUT", "/a", "signed for node 'node-2', and this is 'node-0'"),
    (lambda: sign().replace('node="node-0"', 'node="node-2"'), "PUT", "/a", "signed for node 'node-2'"),
    (lambda: sign(body=None), "PUT", "/a", "needs the body's blake3 digest"),
    (lambda: sign(nonce="a b c d e f g h"), "PUT", "/a", "nonce must be"),
    (lambda: sign().replace(AUTH_SCHEME + " ", "WalrusFS-Ed25519 "), "PUT", "/a", "upgrade walrusfs"),
])
def test_bad_authorisation_is_refused(make_header, method: str, path: str, complaint: str) -> None:
    with pytest.raises(AuthError, match=re.escape(complaint)):
        verify_request(make_header(), method, path, committee(), "node-0")


def test_a_request_is_valid_only_at_the_node_whose_key_the_signer_named() -> None:
    """A node whose key changed (or a signer with another committee file) does not accept it either."""
    header = sign()
    rekeyed = replace(committee(), nodes=(replace(committee().node("node-0"), public_key=public_bytes(WRITER)),
                                          *committee().nodes[1:]))
    with pytest.raises(AuthError, match="does not verify"):
        verify_request(header, "PUT", "/a", rekeyed, "node-0")


def test_the_signature_binds_the_body_unless_the_route_allows_it_unbound() -> None:
    signed = verify_request(sign(body=b"metadata"), "PUT", "/a", committee(), "node-0")
    with pytest.raises(AuthError, match="not the one the Authorization signature covers"):
        signed.check_body(b"other metadata")
    unbound = verify_request(sign(body=None), "PUT", "/a", committee(), "node-0", body_bound=False)
    unbound.check_body(b"any sliver: it is checked against the blob's metadata instead")
    with pytest.raises(AuthError, match="body"):  # the body field is signed too: "-" cannot be slipped in
        verify_request(sign(body=b"x").replace(f'body="{base64.b64encode(body_digest(b"x")).decode()}"',
                                               'body="-"'), "PUT", "/a", committee(), "node-0", body_bound=False)


def test_a_key_that_is_not_a_writer_is_forbidden() -> None:
    header = sign_request(NODE_KEYS[0], "PUT", "/a", committee().node("node-0"))
    with pytest.raises(AuthError) as caught:
        verify_request(header, "PUT", "/a", committee(), "node-0")
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
    text = confirm(0).to_json().replace('"version": 2', '"version": 3')
    with pytest.raises(ValueError, match="version 3"):
        Confirmation.from_json(text)
    assert base64.b64decode(Confirmation.from_json(confirm(0).to_json()).to_json().split('"signature": "')[1][:88])


def test_a_version_1_confirmation_still_verifies_and_version_2_signs_its_expiry() -> None:
    """Certificates written before confirmations carried an expiry stay valid (docs/node-api.md)."""
    c = committee()
    old = Confirmation(3, BLOB, "node-0", c.shards_of("node-0"), version=1).signed_by(NODE_KEYS[0])
    text = old.to_json()
    assert '"expires"' not in text and '"version": 1' in text
    assert Confirmation.from_json(text).verify(public_bytes(NODE_KEYS[0]))
    assert verify_certificate(c, BLOB, [Confirmation.from_json(text)]) == set(c.shards_of("node-0"))
    new = Confirmation(3, BLOB, "node-0", c.shards_of("node-0"), expires=1_900_000_000).signed_by(NODE_KEYS[0])
    assert Confirmation.from_json(new.to_json()).expires == 1_900_000_000
    assert Confirmation.from_json(new.to_json()).verify(public_bytes(NODE_KEYS[0]))
    assert not replace(new, expires=1_900_000_001).verify(public_bytes(NODE_KEYS[0]))
    assert not replace(new, version=1).verify(public_bytes(NODE_KEYS[0]))  # the expiry cannot be stripped
