"""The writer-lease routes of the node API (docs/node-api.md, docs/writer-lease.md):

    GET /v1/leases/{fs_id}   the lease this node holds for a filesystem (public)
    PUT /v1/leases/{fs_id}   grant, renew, take over or release it (committee writer + fs key)
"""

from __future__ import annotations

from typing import Any

from walrusfs.protocol import routes
from walrusfs.protocol.lease import MAX_LEASE_BYTES, LeaseRecord, LeaseRecordError, LeaseState

from .core import NodeCore
from .fs_records import parse_fs_id, read_record, store_record
from .http import HTTPError, Request, Response, json_response
from .leases import FencedError, LeaseRefused, LeaseStore


def current_fields(current: LeaseState | None) -> dict[str, Any]:
    """What a refusal says about the lease that stands: enough for the writer's message."""
    if current is None:
        return {}
    return {"current": current.to_dict()}


class LeaseAPI:
    def __init__(self, core: NodeCore, leases: LeaseStore) -> None:
        self.core = core
        self.leases = leases

    def routes(self) -> dict[str, dict[str, Any]]:
        return {routes.LEASE: {"GET": self.get_lease, "PUT": self.put_lease}}

    async def get_lease(self, request: Request, fs_id: str) -> Response:
        fs_id = parse_fs_id(fs_id)
        state = await self.core.in_worker(self.leases.get, fs_id)
        if state is None:
            raise HTTPError(404, "not_found", f"this node holds no writer lease for filesystem {fs_id}")
        return json_response(state.to_dict())

    async def put_lease(self, request: Request, fs_id: str) -> Response:
        # Not journalled (it would cost every fsync a disk write on each node): nodes.fs_records.
        fs_id, record = await read_record(self.core, request, fs_id, MAX_LEASE_BYTES, _verified_lease,
                                          LeaseRecordError, "bad_lease")
        try:
            state = await store_record(self.core, self.leases.request, record)
        except LeaseRefused as refusal:
            raise HTTPError(409, refusal.code, str(refusal), **current_fields(refusal.current)) from None
        return json_response(state.to_dict())


def fenced_error(error: FencedError) -> HTTPError:
    return HTTPError(409, "fenced", str(error), **current_fields(error.current))


def _verified_lease(body: bytes, fs_id: str) -> LeaseRecord:
    record = LeaseRecord.from_json(body)
    record.verify(fs_id)
    return record
