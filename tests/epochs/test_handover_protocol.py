"""The handover's wire formats (walrusfs.protocol.handover): the new holder's signed "shard synced"
statement, and the JSON of a shard's blob listing and of a node's handover status. Pure: no processes."""

from __future__ import annotations

import json
import os

import pytest

from walrusfs.keys import generate_key, public_bytes
from walrusfs.protocol import routes
from walrusfs.protocol.committee import Committee, NodeInfo
from walrusfs.protocol.handover import (
    BlobListing,
    GainedShard,
    HandedOffShard,
    HandoverError,
    HandoverStatus,
    ShardSynced,
)
from walrusfs.redstuff import BlobId

KEYS = {f"node-{i}": generate_key() for i in range(3)}


def committee(epoch: int, shards: dict[str, tuple[int, ...]]) -> Committee:
    nodes = tuple(NodeInfo(name, f"http://127.0.0.1:{9100 + i}", public_bytes(KEYS[name]), held)
                  for i, (name, held) in enumerate(shards.items()))
    return Committee(epoch, 4, nodes, frozenset())


EPOCH_2 = committee(2, {"node-0": (0, 1), "node-1": (2,), "node-2": (3,)})


def test_a_statement_signed_by_the_shards_holder_verifies_and_survives_its_json() -> None:
    statement = ShardSynced("node-2", 2, 3).signed_by(KEYS["node-2"])
    again = ShardSynced.from_json(statement.to_json())
    assert again == statement
    again.verify(EPOCH_2)


@pytest.mark.parametrize("forgery, reason", [
    (ShardSynced("node-2", 2, 3).signed_by(KEYS["node-1"]), "signature"),  # another node's key
    (ShardSynced("node-1", 2, 3).signed_by(KEYS["node-1"]), "does not hold shard 3"),  # not the holder
    (ShardSynced("node-9", 2, 3).signed_by(KEYS["node-2"]), "does not hold shard 3"),  # not a member
    (ShardSynced("node-2", 3, 3).signed_by(KEYS["node-2"]), "epoch"),  # checked against another epoch
])
def test_a_statement_by_anyone_but_the_shards_holder_is_refused(forgery: ShardSynced, reason: str) -> None:
    with pytest.raises(HandoverError, match=reason):
        forgery.verify(EPOCH_2)


def test_the_signature_covers_epoch_shard_and_sender() -> None:
    statement = ShardSynced("node-0", 2, 0).signed_by(KEYS["node-0"])
    for changed in (ShardSynced("node-0", 2, 1, statement.signature),  # node-0 holds shard 1 too
                    ShardSynced("node-0", 3, 0, statement.signature)):
        with pytest.raises(HandoverError):
            changed.verify(committee(changed.epoch, {"node-0": (0, 1), "node-1": (2,), "node-2": (3,)}))
    signed = statement.signed_bytes()
    assert signed.startswith(b"walrusfs-shard-synced\0\x01")  # domain tag and format version


@pytest.mark.parametrize("text", ["", "[]", '{"version": 2, "node_id": "n", "epoch": 1, "shard": 0, "signature": ""}',
                                  '{"version": 1, "node_id": "n", "epoch": 1, "shard": 70000, "signature": ""}',
                                  '{"version": 1, "node_id": "n", "epoch": 1, "shard": 0, "signature": "%%"}'])
def test_malformed_statements_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(HandoverError, match="synced statement"):
        ShardSynced.from_json(text)


def test_a_listing_round_trips_and_refuses_a_bad_blob_id() -> None:
    blobs = tuple(BlobId(os.urandom(32)) for _ in range(3))
    listing = BlobListing(5, blobs, str(blobs[-1]))
    assert BlobListing.from_json(json.dumps(listing.to_dict())) == listing
    assert BlobListing.from_json(json.dumps(BlobListing(5, (), None).to_dict())).next is None
    with pytest.raises(HandoverError, match="not a blob listing"):
        BlobListing.from_json(json.dumps({**listing.to_dict(), "blobs": ["nope"]}))


def test_the_status_round_trips_and_is_complete_only_when_every_gained_shard_is_synced() -> None:
    status = HandoverStatus("node-3", 2, {4: GainedShard(4, "node-1", 2, bytes_to_move=100, bytes_moved=104)},
                            {1: HandedOffShard(1, "node-2", 2)})
    assert not status.complete
    again = HandoverStatus.from_json(status.to_json())
    assert again == status
    assert again.to_dict()["gaining"][0]["from"] == "node-1"
    again.gaining[4].state = "synced"
    assert again.complete and json.loads(again.to_json())["complete"] is True
    with pytest.raises(HandoverError, match="version 9"):
        HandoverStatus.from_json(json.dumps({**status.to_dict(), "version": 9}))


def test_the_routes_match_their_templates() -> None:
    assert routes.match(["v1", "handover"]).route == routes.HANDOVER
    blobs = routes.match(routes.shard_blobs(12).strip("/").split("/"))
    assert blobs is not None and blobs.route == routes.SHARD_BLOBS and blobs.params == {"shard": "12"}
    synced = routes.match(routes.shard_synced(3).strip("/").split("/"))
    assert synced is not None and synced.route == routes.SHARD_SYNCED and synced.params == {"shard": "3"}
    assert routes.match(["v1", "shards", "3", "other"]) is None
