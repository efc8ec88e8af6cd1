"""``walrusfs audit``: storage challenges. Ask every node for randomly chosen recovery symbols of
slivers it must hold, each with a Merkle proof, and report the nodes that cannot prove they hold
what they signed for.

A symbol of a sliver's expansion can only be computed from the whole sliver, and its proof is
checked against the metadata (itself checked against the blob ID), so a node passes only by
holding the sliver. The blobs come from the nodes' certified feeds (or ``--blob``); a node's
confirmation inside a blob's certificate is what it signed for. A missing sliver of a blob a node
did not sign is reported apart: it should have repaired it, but it never claimed it. A symbol that
fails its proof fails the node whatever it signed: it answered, and the answer was a lie.

Audits follow the committee chain (docs/epochs.md): the committee file is only where the walk
starts; the current holders are challenged, each certificate is checked against the committee of
its own epoch, and a blob certified before the current epoch counts as claimed by every current
holder (the shards it gained came with their slivers, by handover or repair).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from ..client.epochs import CLUSTER_CHAIN, load_chain, verify_in_chain
from ..client.health import HealthBook
from ..client.transport import NodeConnection, NodeError, connections, node_mounts, tls_context
from ..errors import UserError
from ..protocol import routes
from ..protocol.certificates import Certificate, CertificateError
from ..protocol.chain import CommitteeChain
from ..protocol.committee import Committee
from ..protocol.wire import FeedPage
from ..redstuff import BlobId, BlobMetadata, FormatError, SliverKind


@dataclass
class NodeVerdict:
    challenges: int = 0
    passed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # on blobs the node signed for
    unsigned_failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": "pass" if self.ok else "fail", "challenges": self.challenges, "passed": self.passed,
                "failures": self.failures, "unsigned_failures": self.unsigned_failures}


async def certified_blobs(http: httpx.AsyncClient, chain: CommitteeChain) -> dict[BlobId, Certificate]:
    """Every blob some node lists in its certified feed, with a certificate that verifies (blobs
    that a node proved invalid are left out: nobody must hold them)."""
    found: dict[BlobId, Certificate] = {}
    invalid: set[str] = set()

    async def read_feed(url: str) -> None:
        since = 0
        while True:
            try:
                page = FeedPage.from_dict((await http.get(url + routes.CERTIFIED,
                                                          params={"since": since, "limit": 1000})).json())
            except (httpx.HTTPError, ValueError):  # WireError too: a malformed page
                return  # a node that does not answer fails its own challenges below
            for entry in page.entries:
                if entry.invalid:
                    invalid.add(entry.blob_id)
                try:
                    certificate = Certificate.from_json(entry.certificate)
                    verify_in_chain(chain, certificate)
                except (FormatError, CertificateError):
                    continue
                found.setdefault(certificate.blob_id, certificate)
            since = page.next
            if not page.more:
                return

    async with trio.open_nursery() as nursery:
        for node in chain.current.nodes:
            nursery.start_soon(read_feed, node.url)
    return {blob_id: cert for blob_id, cert in found.items() if str(blob_id) not in invalid}


async def certificate_of(http: httpx.AsyncClient, chain: CommitteeChain, blob_id: BlobId) -> Certificate:
    for node in chain.current.nodes:
        try:
            response = await http.get(node.url + routes.certificate(blob_id))
            if response.status_code == 200:
                certificate = Certificate.from_json(response.content)
                if certificate.blob_id == blob_id:
                    verify_in_chain(chain, certificate)
                    return certificate
        except (httpx.HTTPError, FormatError, CertificateError):
            continue
    raise UserError(f"no node has a valid certificate of blob {blob_id}")


@dataclass(frozen=True)
class Problem:
    reason: str
    forged: bool  # the node answered with a symbol that fails its proof (rather than not answering)


async def challenge(connection: NodeConnection, metadata: BlobMetadata, pair: int, kind: SliverKind,
                    target: int) -> Problem | None:
    """None if the node proved it holds the sliver; else what went wrong."""
    try:
        symbol = await connection.get_recovery_symbol(metadata.blob_id, pair, kind, target)
    except NodeError as error:
        return Problem(error.reason, forged=error.lie)
    geometry = metadata.geometry
    source = geometry.sliver_of_pair(pair, kind)
    if (symbol.target_kind is not kind.other or symbol.source_index != source or symbol.target_index != target
            or not await trio.to_thread.run_sync(symbol.is_valid_for, metadata)):
        return Problem("the symbol fails its Merkle proof against the blob's metadata", forged=True)
    return None


async def audit(committees: Committee | CommitteeChain, blob_ids: list[BlobId] | None, sample: int,
                challenges: int, rng: random.Random) -> tuple[list[BlobId], dict[str, NodeVerdict]]:
    """Challenge the holders of the chain's current committee (a bare committee: its holders)."""
    chain = committees if isinstance(committees, CommitteeChain) else CommitteeChain(committees)
    committee = chain.current
    verdicts = {node.id: NodeVerdict() for node in committee.nodes}
    limiter = trio.CapacityLimiter(16)
    async with httpx.AsyncClient(verify=tls_context(), timeout=httpx.Timeout(30.0, connect=3.0),
                                 mounts=node_mounts(committee.nodes)) as http:
        if blob_ids:
            certificates = {blob_id: await certificate_of(http, chain, blob_id) for blob_id in blob_ids}
        else:
            certificates = await certified_blobs(http, chain)
        chosen = sorted(certificates)
        chosen = rng.sample(chosen, min(sample, len(chosen)))
        nodes = connections(http, committee, HealthBook())
        geometry = committee.geometry

        async def one(blob_id: BlobId, node_id: str, metadata: BlobMetadata) -> None:
            certificate = certificates[blob_id]
            signed = (certificate.epoch < committee.epoch  # handed over to today's holders since
                      or any(c.node_id == node_id for c in certificate.confirmations))
            verdict = verdicts[node_id]
            for _ in range(challenges):
                shard = rng.choice(committee.shards_of(node_id))
                pair = geometry.pair_of_shard(shard, blob_id.raw)
                kind, target = rng.choice(list(SliverKind)), rng.randrange(geometry.n_shards)
                async with limiter:
                    problem = await challenge(nodes[node_id], metadata, pair, kind, target)
                verdict.challenges += 1
                if problem is None:
                    verdict.passed += 1
                    continue
                failure = {"blob_id": str(blob_id), "pair": pair, "kind": kind.name.lower(), "target": target,
                           "reason": problem.reason}
                (verdict.failures if signed or problem.forged else verdict.unsigned_failures).append(failure)

        for blob_id in chosen:
            metadata = await metadata_of(nodes, blob_id)
            async with trio.open_nursery() as nursery:
                for node in committee.nodes:
                    nursery.start_soon(one, blob_id, node.id, metadata)
    return chosen, verdicts


async def metadata_of(nodes: dict[str, NodeConnection], blob_id: BlobId) -> BlobMetadata:
    for connection in nodes.values():
        try:
            return await connection.get_metadata(blob_id)  # verified against the blob ID
        except NodeError:
            continue
    raise UserError(f"no node serves valid metadata of certified blob {blob_id}")


async def current_chain(committee: Committee, committee_path: Path | None = None) -> CommitteeChain:
    """The chain from the committee file (and the chain kept beside it, if any) to the committee of now,
    verified link by link."""
    from ..client import BlobClient

    beside = None if committee_path is None else Path(committee_path).parent / CLUSTER_CHAIN
    async with BlobClient(load_chain(committee, None, beside)) as client:
        await client.refresh_chain("audit")
        return client.chain


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("audit", help="storage challenges: which nodes cannot prove they hold "
                                 "the slivers they signed for")
    parser.add_argument("--committee", type=Path, help="committee file (default: the bundled local network's)")
    parser.add_argument("--blob", action="append", default=[], metavar="BLOB_ID",
                        help="audit this blob (repeatable; write --blob=ID for an ID that starts with '-'; "
                             "default: a sample of the nodes' certified blobs)")
    parser.add_argument("--sample", type=int, default=16, help="blobs to sample (default 16)")
    parser.add_argument("--challenges", type=int, default=2,
                        help="random symbols asked of each node per blob (default 2)")
    parser.add_argument("--seed", type=int, help="random seed (default: unpredictable, as challenges must be)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..cluster import COMMITTEE_FILE, bundled_file

    path = bundled_file(args.committee, COMMITTEE_FILE)
    if not Path(path).exists():
        raise UserError(f"no committee file at {path}: pass --committee")
    chain = trio.run(current_chain, Committee.load(path), Path(path))
    try:
        blob_ids = [BlobId.parse(text) for text in args.blob]
    except FormatError as error:
        raise UserError(str(error)) from error
    if args.sample < 1 or args.challenges < 1:
        raise UserError("--sample and --challenges must be at least 1")
    rng = random.Random(args.seed) if args.seed is not None else random.SystemRandom()
    chosen, verdicts = trio.run(audit, chain, blob_ids or None, args.sample, args.challenges, rng)
    failed = sorted(node for node, verdict in verdicts.items() if not verdict.ok)
    if args.json:
        print(json.dumps({"blobs": [str(b) for b in chosen], "failed": failed,
                          "nodes": {node: v.to_dict() for node, v in verdicts.items()}}, indent=1))
    else:
        print(f"audited {len(chosen)} certified blobs, {args.challenges} challenges per node and blob")
        for node, verdict in verdicts.items():
            line = f"{node}: {'pass' if verdict.ok else 'FAIL'} ({verdict.passed}/{verdict.challenges} proven)"
            problems = verdict.failures or verdict.unsigned_failures
            if problems:
                first = problems[0]
                line += (f"; e.g. blob {first['blob_id']} pair {first['pair']} {first['kind']}: {first['reason']}"
                         + ("" if verdict.failures else " (a blob it did not sign for)"))
            print(line)
    if not chosen:
        print("no certified blobs found to audit")
    return 1 if failed else 0
