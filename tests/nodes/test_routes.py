"""The node API's paths (walrusfs.protocol.routes): what a client or a peer builds is what the node
matches, to the route and parameters it was built from; anything else is no route."""

from __future__ import annotations

import os

import pytest

from walrusfs.protocol import routes
from walrusfs.redstuff import BlobId, SliverKind

BLOB = BlobId(os.urandom(32))


def without_blob(value: object) -> str | None:
    """Test IDs without the random blob ID: every process collects the same ones (pytest-xdist
    workers must)."""
    return value.replace(str(BLOB), "BLOB") if isinstance(value, str) else None


def segments(path: str) -> list[str]:
    return path[1:].split("/")


@pytest.mark.parametrize(("path", "route", "params"), [
    (routes.HEALTH, routes.HEALTH, {}),
    (routes.METRICS, routes.METRICS, {}),
    (routes.INVENTORY, routes.INVENTORY, {}),
    (routes.CERTIFIED, routes.CERTIFIED, {}),
    (routes.REPAIR_STATUS, routes.REPAIR_STATUS, {}),
    (routes.root("ab" * 16), routes.ROOT, {"fs_id": "ab" * 16}),
    (routes.lease("cd" * 16), routes.LEASE, {"fs_id": "cd" * 16}),
    (routes.blob(BLOB), routes.BLOB, {"id": str(BLOB)}),
    (routes.metadata(BLOB), routes.BLOB_METADATA, {"id": str(BLOB)}),
    (routes.certificate(BLOB), routes.BLOB_CERTIFICATE, {"id": str(BLOB)}),
    (routes.inconsistency(BLOB), routes.BLOB_INCONSISTENCY, {"id": str(BLOB)}),
    (routes.status(BLOB), routes.BLOB_STATUS, {"id": str(BLOB)}),
    (routes.confirmation(BLOB), routes.BLOB_CONFIRMATION, {"id": str(BLOB)}),
    (routes.sliver(BLOB, 3, SliverKind.SECONDARY), routes.BLOB_SLIVER,
     {"id": str(BLOB), "pair": "3", "kind": "secondary"}),
    (routes.recovery_symbol(BLOB, 3, SliverKind.PRIMARY, 6), routes.BLOB_RECOVERY,
     {"id": str(BLOB), "pair": "3", "kind": "primary", "target": "6"}),
], ids=without_blob)
def test_a_built_path_matches_the_route_it_was_built_for(path: str, route: str, params: dict[str, str]) -> None:
    assert routes.match(segments(path)) == routes.Match(route, params)


@pytest.mark.parametrize("path", ["/v1", "/v1/blobs", "/v1/roots", "/v1/roots/a/b", "/v1/leases", "/v1/repair",
                                  f"/v1/blobs/{BLOB}/other", f"/v1/blobs/{BLOB}/slivers/1",
                                  f"/v1/blobs/{BLOB}/slivers/1/primary/other/2", "/v2/health"], ids=without_blob)
def test_anything_else_is_no_route(path: str) -> None:
    assert routes.match(segments(path)) is None
