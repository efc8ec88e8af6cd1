"""How a node takes a filesystem's signed record (a root record, a writer lease) from a PUT: the one
path both routes share, so that they authorise, bound, parse, verify and store it the same way.

    PUT /v1/roots/{fs_id}    nodes.app (root records, docs/node-api.md)
    PUT /v1/leases/{fs_id}   nodes.lease_api (writer leases, docs/writer-lease.md)

Neither is journalled: each record certifies itself (the filesystem key's signature over the fs ID)
and the stores refuse a replayed older one (a stale sequence number, a renewal counter not above
the last granted), so a replay cannot change anything the writer did not just ask for.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, TypeVar

from walrusfs.protocol.roots import is_fs_id

from .core import NodeCore
from .http import HTTPError, Request

R = TypeVar("R")
T = TypeVar("T")


def parse_fs_id(text: str) -> str:
    if not is_fs_id(text):
        raise HTTPError(400, "bad_fs_id", f"not a filesystem ID: {text[:40]!r} (expected 32 hex digits)")
    return text


async def read_record(core: NodeCore, request: Request, fs_id: str, limit: int, parse: Callable[[bytes, str], R],
                      invalid: type[Exception], code: str) -> tuple[str, R]:
    """(the parsed fs ID, the record) of a signed PUT: the writer's signature over the body, at most
    ``limit`` bytes, ``parse(body, fs_id)`` both parsing and verifying it for that filesystem. Its
    ``invalid`` errors are answered 422 ``code``."""
    signed = await core.authorize(request)
    fs_id = parse_fs_id(fs_id)
    body = await request.read_body(limit)
    core.check_body(signed, body)
    try:
        return fs_id, parse(bytes(body), fs_id)
    except invalid as error:
        raise HTTPError(422, code, str(error)) from None


async def store_record(core: NodeCore, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a worker; a full disk is answered 507, counted and logged."""
    try:
        return await core.in_worker(function, *args)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise core.disk_full() from None
        raise
