"""The checks of fsck that ask the nodes: certificates renewed from fresh confirmations, the root
record and snapshot chain, and (``--deep``) every referenced blob read back and verified."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..client import BlobClient
from ..client.epochs import certificate_from_confirmations
from ..client.roots import RootQuorumError, find_root, publish_root
from ..client.transport import NodeError
from ..protocol import Confirmation
from ..protocol.certificates import Certificate
from ..protocol.roots import RootRecord, fs_id_of_key
from ..redstuff import BlobId
from .encryption import read_key_of
from .fsck import Fsck
from .publisher import LocalSnapshotState
from .snapshot import Manifest, SnapshotError, manifest_from_blob

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)


async def renew_certificates(fsck: Fsck, client: BlobClient) -> None:
    """I5 repair: for a blob whose recorded certificate does not verify, ask every node for its
    confirmation; n-f valid ones of one epoch make a new certificate (during an epoch change some
    nodes confirm in the old epoch and some in the new one: each epoch is tried on its own)."""
    uncertified = fsck.uncertified_blobs()
    # Checked offline against the chain saved locally, a blob certified in an epoch only the nodes
    # could tell about was reported; with the chain fetched since (fsck.committee), it holds.
    still = {blob_id for _, blob_id in uncertified}
    fsck.report.findings = [f for f in fsck.report.findings if not (
        f.check == "I5" and not f.repaired and "no valid availability certificate on record" in f.message
        and not any(blob_id in f.message for blob_id in still))]
    for row_id, blob_id in uncertified:
        parsed = BlobId.parse(blob_id)
        confirmations: list[Confirmation] = []

        async def one(node_id: str, parsed: BlobId = parsed, confirmations: list[Confirmation] = confirmations) -> None:
            with contextlib.suppress(NodeError):
                confirmations.append(await client.connections[node_id].get_confirmation(parsed))

        async with trio.open_nursery() as nursery:
            for node_id in client.connections:
                nursery.start_soon(one, node_id)

        def of_epoch(epoch: int, parsed: BlobId = parsed, confirmations: list[Confirmation] = confirmations
                     ) -> Certificate:
            return Certificate(parsed, epoch, tuple(c for c in confirmations if c.epoch == epoch))

        # The local check reported this blob as left for the nodes: what they answer replaces that.
        fsck.report.findings = [f for f in fsck.report.findings
                                if not (f.check == "I5" and not f.repaired and blob_id in f.message)]
        certificate = certificate_from_confirmations(client.chain, of_epoch,
                                                     [client.committee.epoch, *(c.epoch for c in confirmations)])
        if certificate is None:
            committee = client.committee
            covered = of_epoch(committee.epoch).covered_shards(committee)
            fsck.found("I5", f"blob {blob_id}: no valid certificate on record and the nodes cannot provide one "
                        f"(confirmations of epoch {committee.epoch} cover {len(covered)} shards, "
                        f"{committee.geometry.quorum} needed); its data may be lost", False)
            continue
        fsck.found("I5", f"blob {blob_id}: certificate renewed from {len(certificate.confirmations)} node "
                   f"confirmations of epoch {certificate.epoch}", True)
        if fsck.repair:
            fsck.catalog.set_certificate(row_id, certificate.to_json())


async def check_snapshots(fsck: Fsck, client: BlobClient, key: Ed25519PrivateKey) -> None:
    """The local record of the last snapshot agrees with the network's root record, and the
    snapshot it names can be read and belongs to this filesystem."""
    fsck.report.checks.append("snapshot chain")
    fs_id = fs_id_of_key(key)
    try:
        local = LocalSnapshotState.load(fsck.state)
    except SnapshotError as error:
        fsck.found("snapshots", str(error), False)
        return
    try:
        network = await find_root(client.connections, client.committee, fs_id)
    except RootQuorumError as error:
        fsck.found("snapshots", f"cannot check the root record: {error}", False)
        return
    if local.seq is None:
        # The first snapshot's record reached the nodes, then the daemon died before writing down
        # that it was published: attempted is its number, seq none. That record is our own.
        if network is not None and network.seq > local.attempted:
            fsck.found("snapshots", f"the network holds snapshot {network.seq} of this filesystem but this "
                        "machine never published one: another machine writes it", False)
        return
    if network is None or network.seq < local.seq:
        # Nodes lost it (wiped, or never got it): publish the same record again. Ed25519 signatures
        # are deterministic, so it is bit for bit the record published before.
        fence = (local.holder, local.generation) if local.generation else None  # as it was published
        record = RootRecord.create(key, local.seq, BlobId.parse(local.manifest or ""), local.created_ns or 0, fence)
        what = "missing" if network is None else f"at {network.seq}"
        try:
            if fsck.repair:
                await publish_root(client.connections, client.committee, record)
            fsck.found("snapshots", f"root record {what} on the network, this machine published {local.seq}: "
                        "published again", True)
        except RootQuorumError as error:
            fsck.found("snapshots", f"root record {what} on the network and cannot be published: {error}", False)
    elif network.seq > local.seq and network.seq > local.attempted:
        fsck.found("snapshots", f"the network holds snapshot {network.seq}, newer than this machine's "
                    f"{local.seq}: another machine has written this filesystem", False)
    try:
        manifest = manifest_from_blob(await client.read(BlobId.parse(local.manifest or "")), read_key_of(key))
    except Exception as error:  # any failure to read is the finding
        fsck.found("snapshots", f"snapshot {local.seq} (manifest {local.manifest}) cannot be read: {error}", False)
        return
    if manifest.fs_id != fs_id or manifest.seq != local.seq:
        fsck.found("snapshots", f"manifest {local.manifest} is snapshot {manifest.seq} of {manifest.fs_id}, "
                    f"expected {local.seq} of {fs_id}", False)


def referenced_blobs(fsck: Fsck) -> list[str]:
    """Every blob the tree uses, then every blob the last snapshot uses."""
    blobs = fsck.catalog.live_blob_ids()
    try:
        local = LocalSnapshotState.load(fsck.state)
        if local.manifest:
            manifest = Manifest.from_bytes(fsck.state.snapshot_manifest.read_bytes())
            blobs.append(local.manifest)
            blobs.extend(dict.fromkeys(s.blob for s in manifest.segments))
    except (OSError, SnapshotError):
        pass
    return blobs


async def verify_blobs(fsck: Fsck, client: BlobClient, progress: Progress | None = None) -> None:
    """--deep: read every referenced blob from the network, each byte verified against its ID."""
    fsck.report.checks.append("deep: every referenced blob readable and verified")
    blobs = referenced_blobs(fsck)
    done = 0
    limit = trio.CapacityLimiter(2)

    async def one(blob_id: str) -> None:
        nonlocal done
        async with limit:
            try:
                await client.read(BlobId.parse(blob_id))
            except Exception as error:  # a failed read is the finding
                fsck.found("deep", f"blob {blob_id} cannot be read back verified: {error}", False)
            done += 1
            if progress:
                progress("verifying blobs", done, len(blobs))

    async with trio.open_nursery() as nursery:
        for blob_id in blobs:
            nursery.start_soon(one, blob_id)
