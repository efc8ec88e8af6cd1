"""``walrusfs dataset publish|verify|get|diff`` (docs/datasets.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import trio

from ..errors import UserError
from ..paths import cluster_dir

SUMMARY = "publish a tree as one content-addressed ID; verify, get and compare datasets from anywhere"


def register(commands: argparse._SubParsersAction) -> None:
    dataset = commands.add_parser("dataset", help=SUMMARY, description=SUMMARY + " (docs/datasets.md)")
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)

    def committee(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--committee", type=Path, help="committee file, of any epoch (default: the bundled "
                            "local network's); newer committees are fetched from the nodes and verified")

    publish = actions.add_parser("publish", help="store a directory's tree and print its dataset ID")
    publish.add_argument("path", type=Path, metavar="PATH",
                         help="a directory: a local one or one inside a walrusfs mount (its content is published)")
    publish.add_argument("--name", default="", help="a name covered by the ID (default: none)")
    publish.add_argument("--sign", type=Path, metavar="KEY",
                         help="an ed25519 key file: adds the publisher's signature over the ID (verify --publisher)")
    publish.add_argument("--times", action="store_true",
                         help="record modification times too (then the ID changes when a time does)")
    publish.add_argument("--writer-key", type=Path,
                         help="writer key file (default: the bundled local network's writer.key)")
    committee(publish)
    publish.set_defaults(func=lambda args: trio.run(_publish, args))

    verify = actions.add_parser("verify", help="check a dataset from the network alone: manifest, certificates, "
                                "who holds each blob, every byte")
    dataset_argument(verify, "ID")
    verify.add_argument("--sample", type=float, metavar="FRACTION",
                        help="read and hash only this random fraction of the files (0 < FRACTION <= 1); the "
                             "manifest and every blob's availability are still checked in full; the confidence "
                             "is stated")
    verify.add_argument("--publisher", metavar="PUBKEY",
                        help="require a signature by this publisher: a base64 public key, or a key file")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    committee(verify)
    verify.set_defaults(func=lambda args: trio.run(_verify, args))

    get = actions.add_parser("get", help="write a dataset's tree into a new directory, every byte verified")
    dataset_argument(get, "ID")
    get.add_argument("dest", type=Path, metavar="DEST", help="a new or empty directory")
    committee(get)
    get.set_defaults(func=lambda args: trio.run(_get, args))

    diff = actions.add_parser("diff", help="which paths one dataset adds, removes or changes against another")
    dataset_argument(diff, "ID1")
    dataset_argument(diff, "ID2")
    diff.add_argument("--json", action="store_true")
    committee(diff)
    diff.set_defaults(func=lambda args: trio.run(_diff, args))


def dataset_argument(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument(name.lower(), metavar=name, help="a dataset ID (wds1...)")


def _dataset(text: str):
    from .ids import DatasetId, DatasetIdError

    try:
        return DatasetId.parse(text)
    except DatasetIdError as error:
        raise UserError(str(error), exit_code=2) from error


def _client(args: argparse.Namespace, writer: bool = False):
    from ..client import BlobClient
    from ..client.epochs import CLUSTER_CHAIN, load_chain
    from ..keys import load_key
    from ..protocol.committee import Committee

    path = args.committee or cluster_dir() / "committee.toml"
    if not Path(path).exists():
        raise UserError(f"no committee file at {path}: pass --committee (a committee file of the network, of "
                        "any epoch), or start the bundled network with 'walrusfs cluster up'")
    committee = Committee.load(path)
    key = None
    if writer:
        key_path = args.writer_key or cluster_dir() / "writer.key"
        key = load_key(key_path)
    return BlobClient(load_chain(committee, None, Path(path).parent / CLUSTER_CHAIN), writer_key=key)


async def _publish(args: argparse.Namespace) -> int:
    from ..client import StoreError
    from ..keys import load_key
    from .publish import publish

    signer = load_key(args.sign) if args.sign else None
    async with _client(args, writer=True) as client:
        try:
            published = await publish(client, args.path, args.name, args.times, signer)
        except StoreError as error:
            raise UserError(f"publishing {args.path} failed, no ID was given out: {error}", exit_code=2) from error
    header = published.manifest.header
    print(f"published {header.entries} entries ({header.files} files, {header.file_bytes} bytes; "
          f"{published.stored_bytes} stored in {published.data_blobs} data blobs, manifest in "
          f"{published.manifest_blobs} + 1 blobs)", file=sys.stderr)
    print(published.dataset)
    return 0


def _publisher_key(text: str | None) -> bytes | None:
    if text is None:
        return None
    from ..keys import decode_public_key, load_key, public_bytes

    if Path(text).is_file():
        return public_bytes(load_key(Path(text)))
    try:
        return decode_public_key(text)
    except ValueError as error:
        raise UserError(f"--publisher: {error}; give a base64 ed25519 public key or a key file") from error


async def _verify(args: argparse.Namespace) -> int:
    from .fetch import DatasetNotFound
    from .verify import verify

    dataset = _dataset(args.id)
    if args.sample is not None and not 0 < args.sample <= 1:
        raise UserError("--sample is a fraction: 0 < FRACTION <= 1 (0.01 reads 1% of the files)")
    publisher = _publisher_key(args.publisher)
    async with _client(args) as client:
        try:
            report = await verify(client, dataset, args.sample, publisher)
        except DatasetNotFound as error:
            if args.json:
                print(json.dumps({"dataset": str(dataset), "ok": False, "error": str(error)}, indent=2))
            raise UserError(str(error), exit_code=2) from error
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        _print_verify(report)
    return 0 if report.ok else 1


def _print_verify(report) -> None:
    name = f" ({report.name})" if report.name else ""
    print(f"dataset {report.dataset}{name}")
    print(f"  {report.entries} entries, {report.files} files, {report.file_bytes} bytes, {report.blobs} blobs; "
          f"index {report.index_blob}")
    print(f"  epoch {report.epoch}: {report.certificates_verified} of {report.blobs - 1} stored certificates hold "
          "against their epoch's committee; every blob's holders asked")
    print(f"  checked {report.files_checked} files, {report.bytes_checked} bytes (read {report.bytes_read}) "
          f"in {report.seconds:.1f} s")
    if report.confidence:
        print(f"  sample: {report.confidence}")
    if report.publisher:
        print(f"  signed by publisher {report.publisher}")
    for node, why in sorted(report.liars.items()):
        print(f"  node {node} LIED: served data that does not verify ({why}); it was not believed")
    for node, why in sorted(report.unreachable.items()):
        print(f"  node {node} did not answer: {why}")
    for line in report.refused_indexes:
        print(f"  refused: {line}")
    for line in report.warnings:
        print(f"  warning: {line}")
    for problem in report.problems:
        print(f"  FAILED {problem.kind} {problem.name}: {problem.why}")
    if report.ok:
        print("OK: every check holds")
    else:
        print(f"FAILED: {len(report.problems)} problems")


async def _get(args: argparse.Namespace) -> int:
    from .fetch import DatasetNotFound
    from .get import get

    dataset = _dataset(args.id)
    async with _client(args) as client:
        try:
            report = await get(client, dataset, args.dest)
        except DatasetNotFound as error:
            raise UserError(str(error), exit_code=2) from error
    for node, why in sorted(report.liars.items()):
        print(f"node {node} served data that does not verify ({why}); it was not believed", file=sys.stderr)
    for path, why in report.problems:
        print(f"FAILED {path}: {why}", file=sys.stderr)
    print(f"{report.files} files, {report.bytes} bytes verified -> {args.dest}", file=sys.stderr)
    if report.problems:
        print(f"{len(report.problems)} files could not be written verified; they are absent from {args.dest}",
              file=sys.stderr)
        return 1
    return 0


async def _diff(args: argparse.Namespace) -> int:
    from .fetch import DatasetNotFound
    from .get import diff

    first, second = _dataset(args.id1), _dataset(args.id2)
    async with _client(args) as client:
        try:
            difference = await diff(client, first, second)
        except DatasetNotFound as error:
            raise UserError(str(error), exit_code=2) from error
    if args.json:
        print(json.dumps({"added": difference.added, "removed": difference.removed,
                          "changed": difference.changed}, indent=2))
    else:
        for path in difference.added:
            print(f"+ {path}")
        for path in difference.removed:
            print(f"- {path}")
        for path, what in difference.changed.items():
            print(f"M {path} ({', '.join(what)})")
    return 0 if difference.same else 1


__all__ = ["register"]
