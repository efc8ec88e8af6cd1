"""A filesystem's view of the committee chain: the committee file it was made with (fs.toml) is the
anchor it trusts, and ``<state>/committee-chain.json`` keeps the links verified since, so a mount, fsck
or restore starts from the newest committee it knows and follows the network from there
(walrusfs.client.epochs, docs/epochs.md)."""

from __future__ import annotations

from ..client import BlobClient, ClientSettings
from ..client.epochs import chain_saver, load_chain
from ..protocol.chain import CommitteeChain
from ..protocol.committee import Committee
from .config import FsState


def fs_chain(state: FsState, committee: Committee) -> CommitteeChain:
    """The saved chain from ``committee`` (the filesystem's committee file), re-verified; the bare
    committee if none is saved (a filesystem made before epochs, or one that never saw a change)."""
    return load_chain(committee, state.chain_path)


def fs_client(state: FsState, committee: Committee, writer_key: object | None = None,
              settings: ClientSettings | None = None) -> BlobClient:
    """A blob client that starts from the filesystem's chain and saves it in the state directory
    whenever it grows."""
    return BlobClient(fs_chain(state, committee), writer_key, settings, save_chain=chain_saver(state.chain_path))


def save_chain(state: FsState, chain: CommitteeChain) -> None:
    """Keep ``chain`` in the state directory (a restore, which creates the directory after the chain
    was fetched)."""
    if chain.links:
        chain_saver(state.chain_path)(chain)


__all__ = ["fs_chain", "fs_client", "save_chain"]
