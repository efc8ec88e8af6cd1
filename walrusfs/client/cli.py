"""``walrusfs blob put|get|status``: the blob client from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from ..errors import UserError
from ..malloc import keep_freed_buffers
from ..paths import cluster_dir
from ..progress import Progress
from ..redstuff import BlobId, FormatError
from .certificate import CERTIFICATE_VERSION
from .client import BlobClient, ClientSettings
from .read import ReadError, ReadReport
from .store import StoreError, StoreProgress


def _default_cluster_dir() -> Path:
    return cluster_dir()


def register(commands: argparse._SubParsersAction) -> None:
    blob = commands.add_parser("blob", help="store and read single blobs")
    actions = blob.add_subparsers(dest="action", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--committee", type=Path,
                            help="committee file (default: the bundled local network's)")

    put = actions.add_parser("put", help="store a file as one blob; prints its blob ID")
    put.add_argument("file", type=Path)
    put.add_argument("--writer-key", type=Path,
                     help="writer key file (default: the bundled local network's writer.key)")
    put.add_argument("--certificate-dir", type=Path,
                     help="where to save the certificate (default: <cluster dir>/certificates)")
    put.add_argument("--timeout", type=float, default=ClientSettings.store_deadline,
                     help="seconds to wait for a certificate before giving up "
                          f"(default {ClientSettings.store_deadline:.0f})")
    common(put)
    put.set_defaults(func=lambda args: trio.run(_put, args))

    get = actions.add_parser("get", help="read a blob, verified, to a file or stdout")
    blob_argument(get)
    get.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    get.add_argument("--offset", type=int, default=0)
    get.add_argument("--length", type=int)
    common(get)
    get.set_defaults(func=lambda args: trio.run(_get, args))

    status = actions.add_parser("status", help="which node holds which slivers of a blob")
    blob_argument(status)
    status.add_argument("--json", action="store_true")
    common(status)
    status.set_defaults(func=lambda args: trio.run(_status, args))


def _committee(args: argparse.Namespace):
    from ..protocol.committee import Committee

    path = args.committee or _default_cluster_dir() / "committee.toml"
    if not Path(path).exists():
        raise UserError(f"no committee file at {path}: pass --committee, or start the bundled "
                        "network with 'walrusfs cluster init' and 'walrusfs cluster up'")
    return Committee.load(path)


def blob_argument(parser: argparse.ArgumentParser) -> None:
    """BLOB_ID, or ``--blob=BLOB_ID`` for an ID that starts with '-' (argparse takes it for an
    option; one ID in 64 does)."""
    parser.add_argument("blob_id", nargs="?", metavar="BLOB_ID")
    parser.add_argument("--blob", metavar="BLOB_ID", help="the blob, if its ID starts with '-'")


def _blob_id(args: argparse.Namespace) -> BlobId:
    text = args.blob if args.blob is not None else args.blob_id
    if text is None or (args.blob is not None and args.blob_id is not None):
        raise UserError("give one blob ID: BLOB_ID, or --blob=BLOB_ID if it starts with '-'")
    try:
        return BlobId.parse(text)
    except FormatError as error:
        raise UserError(str(error)) from error


class _StoreProgress:
    """A blob store's progress (bytes sent, shards confirmed) as a Progress display."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.display: Progress | None = None

    def __call__(self, progress: StoreProgress) -> None:
        if self.display is None:
            self.display = Progress(self.label, progress.bytes_total)
        self.display.update(progress.bytes_sent, progress.bytes_total,
                            note=f"confirmed shards {progress.confirmed_shards}/{progress.quorum} needed")

    def done(self) -> None:
        if self.display is not None:
            self.display.close()


async def _put(args: argparse.Namespace) -> int:
    keep_freed_buffers()
    from ..keys import load_key

    committee = _committee(args)
    key_path = args.writer_key or _default_cluster_dir() / "writer.key"
    try:
        key = load_key(key_path)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load writer key {key_path}: {error}") from error
    try:
        data = args.file.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {args.file}: {error.strerror}") from error
    print(f"encoding {args.file} ({len(data)} bytes) for {committee.n_shards} shards", file=sys.stderr)
    progress = _StoreProgress("uploading")
    if args.timeout <= 0:
        raise UserError("--timeout must be positive")
    async with BlobClient(committee, writer_key=key,
                          settings=ClientSettings(store_deadline=args.timeout)) as client:
        try:
            stored = await client.store(data, on_progress=progress)
        except StoreError as error:
            progress.done()
            raise UserError(str(error), exit_code=2) from error
        progress.done()
        certificate_dir = args.certificate_dir or _default_cluster_dir() / "certificates"
        path = certificate_dir / f"{stored.blob_id}.json"
        stored.certificate.save(path)
        print(stored.blob_id)
        print(f"certificate (v{CERTIFICATE_VERSION}, {len(stored.certificate.confirmations)} "
              f"confirmations): {path}", file=sys.stderr)
        if str(stored.blob_id).startswith("-"):
            print(f"the ID starts with '-': name it as --blob={stored.blob_id}", file=sys.stderr)
    return 0


async def _get(args: argparse.Namespace) -> int:
    keep_freed_buffers()
    committee = _committee(args)
    blob_id = _blob_id(args)
    report = ReadReport()
    async with BlobClient(committee) as client:
        try:
            data = await client.read(blob_id, args.offset, args.length, report)
        except ReadError as error:
            raise UserError(str(error), exit_code=2) from error
    for node, why in sorted(report.liars.items()):
        print(f"warning: node {node} served data that does not verify: {why}", file=sys.stderr)
    if args.output:
        tmp = args.output.with_name(args.output.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(args.output)
        print(f"{len(data)} bytes verified against {blob_id} -> {args.output} ({report.path})",
              file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
    return 0


async def _status(args: argparse.Namespace) -> int:
    committee = _committee(args)
    blob_id = _blob_id(args)
    async with BlobClient(committee) as client:
        statuses = await client.status(blob_id)
    if args.json:
        print(json.dumps(statuses, indent=2))
        return 0
    print(f"blob {blob_id}")
    print(f"{'node':<10} {'shard':>5} {'pair':>4}  {'metadata':<9} {'primary':<18} {'secondary':<18}")
    complete = 0
    for node in committee.nodes:
        status = statuses.get(node.id) or {}
        if "error" in status:
            print(f"{node.id:<10} {'-':>5} {'-':>4}  unreachable: {status['error']}")
            continue
        complete += bool(status.get("complete"))
        metadata = (status.get("metadata") or {}).get("state", "missing")
        for shard in status.get("shards", []):
            cells = []
            for kind in ("primary", "secondary"):
                entry = shard.get(kind) or {}
                state = entry.get("state", "ok") if entry.get("stored") else "missing"
                cells.append(f"#{entry.get('index', '?')} {state}")
            print(f"{node.id:<10} {shard['shard']:>5} {shard['pair']:>4}  {metadata:<9} {cells[0]:<18} {cells[1]:<18}")
    print(f"{complete} of {len(committee.nodes)} nodes hold every sliver of their shards "
          f"(a certificate needs nodes covering {committee.geometry.quorum} of {committee.n_shards} shards)")
    return 0
