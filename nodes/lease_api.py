"""The writer-lease routes of the node API (docs/node-api.md, docs/writer-lease.md):

    GET /v1/leases/{fs_id}   the lease this node holds for a filesystem (public)
    PUT /v1/leases/{fs_id}   grant, renew, take over or release it (committee writer + fs key)
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any

from walrusfs.lease import MAX_LEASE_BYTES, LeaseRecord, LeaseRecordError, LeaseState

from .http import HTTPError, Request, Response, json_response
from .leases import FencedError, LeaseRefused, LeaseStore

if TYPE_CHECKING:
    from .app import NodeApp


def current_fields(current: LeaseState | None) -> dict[str, Any]:
    """What a refusal says about the lease that stands: enough for the writer's message."""
    if current is None:
        return {}
    return {"current": current.to_dict()}


class LeaseAPI:
    def __init__(self, app: NodeApp, leases: LeaseStore) -> None:
        self.app = app
        self.leases = leases

    def route(self, fs_id: str) -> tuple[str, dict[str, Any], tuple[Any, ...]]:
        return "/v1/leases/{fs_id}", {"GET": self.get_lease, "PUT": self.put_lease}, (fs_id,)

    async def get_lease(self, request: Request, fs_id: str) -> Response:
        fs_id = _parse_fs_id(fs_id)
        state = await self.app._in_worker(self.leases.get, fs_id)
        if state is None:
            raise HTTPError(404, "not_found", f"this node holds no writer lease for filesystem {fs_id}")
        return json_response(state.to_dict())

    async def put_lease(self, request: Request, fs_id: str) -> Response:
        # Not journalled (it would cost every fsync a disk write on each node): the lease request
        # certifies itself, and the node refuses one whose renewal counter is not above the last it
        # granted, so a replay cannot grant or extend anything the holder did not just ask for.
        signed = await self.app._authorize(request)
        fs_id = _parse_fs_id(fs_id)
        body = await request.read_body(MAX_LEASE_BYTES)
        self.app._check_body(signed, body)
        try:
            record = LeaseRecord.from_json(body)
            record.verify(fs_id)
        except LeaseRecordError as error:
            raise HTTPError(422, "bad_lease", str(error)) from None
        try:
            state = await self.app._in_worker(self.leases.request, record)
        except LeaseRefused as refusal:
            raise HTTPError(409, refusal.code, str(refusal), **current_fields(refusal.current)) from None
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self.app._disk_full() from None
            raise
        return json_response(state.to_dict())


def fenced_error(error: FencedError) -> HTTPError:
    return HTTPError(409, "fenced", str(error), **current_fields(error.current))


def _parse_fs_id(text: str) -> str:
    from walrusfs.roots import is_fs_id

    if not is_fs_id(text):
        raise HTTPError(400, "bad_fs_id", f"not a filesystem ID: {text[:40]!r} (expected 32 hex digits)")
    return text
