"""The node's JSON bodies as typed wire types (walrusfs.protocol.wire): bodies exactly as nodes wrote
them before the types existed parse, and serialise back to the same bytes (an old reader sees no
change); a malformed body is refused with an error naming the field."""

from __future__ import annotations

import json

import pytest

from walrusfs.protocol.wire import ErrorBody, FeedEntry, FeedPage, Health, RepairStatus, WireError

# Written as the code before walrusfs.protocol.wire built them: json.dumps of a dict in this key order.
OLD_FEED_PAGE = json.dumps({"instance": "3f2a9c01d4e5b6a7", "entries": [
    {"seq": 11, "blob_id": "A" * 43, "certificate": '{"blob_id": "x"}', "invalid": False},
    {"seq": 12, "blob_id": "B" * 43, "certificate": "{}", "invalid": True}], "next": 13, "more": False})
OLD_HEALTH = json.dumps({"ok": True, "node_id": "node-0", "public_key": "cHVibGlj", "epoch": 1, "n_shards": 7,
                         "shards": [0, 4], "blobs": 12, "bytes": 123456, "quarantined": 0})
HEALTH_BEFORE_PUBLIC_KEY = json.dumps({"ok": True, "node_id": "node-0", "epoch": 1, "n_shards": 7, "shards": [0],
                                       "blobs": 0, "bytes": 0, "quarantined": 0})
SCRUB = {"interval": 86400.0, "passes": 0, "objects": 0, "bytes": 0, "rot_found": 0, "missing_found": 0,
         "position": 0, "last_pass_seconds": 0.0}
OLD_REPAIR_STATUS = json.dumps({
    "node_id": "node-3", "enabled": True, "certified_blobs": 32, "invalid_blobs": 0, "queued_blobs": 0,
    "active_blobs": 0, "retrying_blobs": 0, "missing_slivers": 0, "missing_found": 64, "recovered_slivers": 64,
    "failed_attempts": 0, "bytes_fetched": 573000000, "bytes_lost": 572000000, "bytes_recovered": 572000000,
    "feed_bytes": 400000, "metadata_fetched": 32, "certificates_learned": 32, "invalid_found": 0,
    "invalid_learned": 0, "disk_full": True, "disk_full_since": 1764590000.25, "disk_full_attempts": 3,
    "rebuilt_waiting_bytes": 4096, "peers": 6, "synced_peers": 6, "idle": False, "scrub": SCRUB})
OLD_ERROR = json.dumps({"error": "stale_root_record", "message": "this node holds record 7 already", "seq": 7})


@pytest.mark.parametrize(("kind", "body"), [(FeedPage, OLD_FEED_PAGE), (Health, OLD_HEALTH),
                                            (Health, HEALTH_BEFORE_PUBLIC_KEY), (RepairStatus, OLD_REPAIR_STATUS),
                                            (ErrorBody, OLD_ERROR)])
def test_a_body_as_the_old_node_wrote_it_parses_and_serialises_to_the_same_bytes(kind: type, body: str) -> None:
    assert json.dumps(kind.from_dict(json.loads(body)).to_dict()) == body


def test_the_parsed_fields_are_the_body_s() -> None:
    page = FeedPage.from_dict(json.loads(OLD_FEED_PAGE))
    assert (page.instance, page.next, page.more) == ("3f2a9c01d4e5b6a7", 13, False)
    assert page.entries[1] == FeedEntry(12, "B" * 43, "{}", invalid=True)
    assert Health.from_dict(json.loads(HEALTH_BEFORE_PUBLIC_KEY)).public_key is None
    status = RepairStatus.from_dict(json.loads(OLD_REPAIR_STATUS))
    assert (status.state, status.disk_full_since, status.scrub.interval) == ("disk full", 1764590000.25, 86400.0)
    error = ErrorBody.from_dict(json.loads(OLD_ERROR))
    assert (error.code, error.extra) == ("stale_root_record", {"seq": 7})


def test_a_repair_status_from_a_node_before_disk_full_handling_reads_as_not_full() -> None:
    old = {key: value for key, value in json.loads(OLD_REPAIR_STATUS).items()
           if key not in ("disk_full", "disk_full_since", "disk_full_attempts", "rebuilt_waiting_bytes")}
    status = RepairStatus.from_dict(old)
    assert (status.disk_full, status.disk_full_since, status.disk_full_attempts) == (False, None, 0)
    assert status.state == "repairing"  # not idle, every peer synced


def test_repair_states_name_what_the_node_is_doing() -> None:
    base = json.loads(OLD_REPAIR_STATUS) | {"disk_full": False}
    assert RepairStatus.from_dict(base | {"idle": True}).state == "whole"
    assert RepairStatus.from_dict(base | {"synced_peers": 2}).state == "syncing"


def _without(body: str, key: str) -> dict:
    data = json.loads(body)
    del data[key]
    return data


@pytest.mark.parametrize(("kind", "data", "says"), [
    (FeedPage, _without(OLD_FEED_PAGE, "next"), "field 'next' is missing"),
    (FeedPage, json.loads(OLD_FEED_PAGE) | {"more": "no"}, "field 'more' must be bool, not a string"),
    (FeedPage, json.loads(OLD_FEED_PAGE) | {"entries": [{"seq": True, "blob_id": "x", "certificate": "{}"}]},
     "entry 0: field 'seq' must be int, not a boolean"),
    (FeedPage, [], "expected a JSON object, got list"),
    (Health, json.loads(OLD_HEALTH) | {"shards": [0, "4"]}, "'shards' must be a list of integers"),
    (Health, json.loads(OLD_HEALTH) | {"blobs": None}, "field 'blobs' must be int, not null"),
    (RepairStatus, json.loads(OLD_REPAIR_STATUS) | {"scrub": SCRUB | {"passes": 1.5}},
     "scrub status: field 'passes' must be int, not a number"),
    (RepairStatus, _without(OLD_REPAIR_STATUS, "idle"), "field 'idle' is missing"),
    (ErrorBody, {"detail": "Not Found"}, "field 'error' is missing"),
    (ErrorBody, {"error": "x", "message": 5}, "field 'message' must be str"),
])
def test_a_malformed_body_is_refused_naming_the_field(kind: type, data: object, says: str) -> None:
    with pytest.raises(WireError, match=says.replace("(", r"\(")):
        kind.from_dict(data)


def test_a_feed_page_of_a_newer_format_is_refused_with_what_to_do() -> None:
    with pytest.raises(WireError, match="format 2, this walrusfs reads format 1: upgrade walrusfs"):
        FeedPage.from_dict(json.loads(OLD_FEED_PAGE) | {"format": 2})
    assert FeedPage.from_dict(json.loads(OLD_FEED_PAGE) | {"format": 1}).format == 1
