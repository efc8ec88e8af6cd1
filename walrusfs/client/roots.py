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
from .transport import NodeConnection, NodeError

log = logging.getLogger(__name__)

_RETRY = Backoff(first=0.2, cap=3.0)  # walrusfs.retry: full jitter, capped


class RootQuorumError(Exception):
    """Not enough nodes answered to publish or to trust a root record; says which and why."""


def _shards(committee: Committee, node_ids: list[str]) -> int:
    """Shards the nodes hold in ``committee``; a node not in it counts for nothing."""
    return sum(len(committee.shards_of(node_id)) for node_id in node_ids if committee.has_node(node_id))


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
    covered = _shards(committee, stored)
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
    answered: list[str] = []
    records: list[RootRecord] = []
    failures: dict[str, str] = {}
    quorum_reached = trio.Event()
    finished = trio.Event()
    pending = [len(connections)]

    async def one(connection: NodeConnection) -> None:
        try:
            record = await connection.get_root(fs_id)
        except NodeError as error:
            failures[connection.node_id] = error.reason
            if error.lie:
                log.warning("node %s served a bad root record for %s: %s", connection.node_id, fs_id, error.reason)
        else:
            answered.append(connection.node_id)
            if record is not None:
                records.append(record)
            if _shards(committee, answered) >= committee.geometry.quorum:
                quorum_reached.set()
        pending[0] -= 1
        if not pending[0]:
            finished.set()

    with trio.move_on_after(deadline):
        async with trio.open_nursery() as nursery:
            for connection in connections.values():
                nursery.start_soon(one, connection)

            async def stop_when_done() -> None:
                await finished.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_when_done)

            async def stop_after_grace() -> None:
                await quorum_reached.wait()
                await trio.sleep(grace)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_after_grace)
    if not quorum_reached.is_set():
        detail = "; ".join(f"{node}: {why}" for node, why in sorted(failures.items()))
        raise RootQuorumError(
            f"cannot find the root record of filesystem {fs_id}: nodes covering "
            f"{_shards(committee, answered)} shards answered, {committee.geometry.quorum} needed "
            f"({detail or 'no answer in time'}). Check the nodes (walrusfs cluster status).")
    return max(records, key=lambda r: r.order, default=None)
