"""Publishing and finding a filesystem's root record (walrusfs.protocol.roots) on a quorum of nodes.

Records are replicated whole to every node, not erasure-coded: they are a few hundred bytes. A
record counts as published once nodes covering n-f shards hold it; a reader that hears from nodes
covering n-f shards therefore hears from at least one honest node holding it (the two quorums
share f+1 shards), and takes the highest (lease generation, sequence number) whose signature
verifies. Forged,
corrupted or stale records on some nodes cannot win.
"""

from __future__ import annotations

import logging

import trio

from ..protocol.committee import Committee
from ..protocol.roots import RootRecord
from ..retry import Backoff
from .quorum import ask_every_node, shards_of
from .transport import NodeConnection, NodeError

log = logging.getLogger(__name__)

_RETRY = Backoff(first=0.2, cap=3.0)  # walrusfs.retry: full jitter, capped


class RootQuorumError(Exception):
    """Not enough nodes answered to publish or to trust a root record; says which and why."""


async def publish_root(connections: dict[str, NodeConnection], committee: Committee, record: RootRecord,
                       deadline: float = 30.0) -> list[str]:
    """Store ``record`` on every node; returns the nodes that hold it. Raises RootQuorumError unless
    they cover n-f shards. A node holding a *higher* record means another writer published: that
    is an error too, never silently overwritten."""
    stored: list[str] = []
    failures: dict[str, str] = {}

    async def one(connection: NodeConnection) -> None:
        attempt = 0
        while True:
            try:
                await connection.put_root(record)
                stored.append(connection.node_id)
                return
            except NodeError as error:
                failures[connection.node_id] = error.reason
                if not error.transient:
                    return
            await trio.sleep(_RETRY.delay(attempt))
            attempt += 1

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for connection in connections.values():
                nursery.start_soon(one, connection)
    covered = shards_of(committee, stored)
    if covered < committee.geometry.quorum:
        detail = "; ".join(f"{node}: {why}" for node, why in sorted(failures.items()) if node not in stored)
        raise RootQuorumError(
            f"root record {record.seq} of filesystem {record.fs_id} reached nodes covering {covered} "
            f"shards, {committee.geometry.quorum} needed ({detail or 'no answer'})")
    return stored


async def find_root(connections: dict[str, NodeConnection], committee: Committee, fs_id: str,
                    deadline: float = 20.0, grace: float = 0.5) -> RootRecord | None:
    """The highest valid root record held by the nodes (None: a quorum says there is none).

    Waits for every node up to ``grace`` seconds after nodes covering n-f shards have answered, so
    a fast stale quorum does not hide a newer record one slow node already holds."""

    async def ask(connection: NodeConnection) -> RootRecord | None:
        try:
            return await connection.get_root(fs_id)
        except NodeError as error:
            if error.lie:
                log.warning("node %s served a bad root record for %s: %s", connection.node_id, fs_id, error.reason)
            raise

    found = await ask_every_node(connections, committee, ask, deadline, grace)
    if not found.quorum:
        raise RootQuorumError(
            f"cannot find the root record of filesystem {fs_id}: nodes covering "
            f"{found.covered(committee)} shards answered, {committee.geometry.quorum} needed "
            f"({found.detail()}). Check the nodes (walrusfs cluster status).")
    return max((record for record in found.answers.values() if record is not None), key=lambda r: r.order,
               default=None)
