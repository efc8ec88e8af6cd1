"""A filesystem's view of the committee chain: the committee file it was made with (fs.toml) is the
anchor it trusts, and ``<state>/committee-chain.json`` keeps the links verified since, so a mount, fsck
or restore starts from the newest committee it knows and follows the network from there
(walrusfs.client.epochs, docs/epochs.md)."""

from __future__ import annotations

from pathlib import Path

from ..client import BlobClient, ClientSettings
from ..client.epochs import CLUSTER_CHAIN, chain_saver, load_chain
from ..errors import UserError
from ..protocol.chain import CommitteeChain
from ..protocol.committee import Committee
from .config import FsState


def fs_chain(state: FsState, committee: Committee, committee_path: str | Path | None = None) -> CommitteeChain:
    """The saved chain from ``committee`` (the filesystem's committee file), re-verified; else the
    chain kept beside the committee file; else the bare committee (a filesystem made before epochs,
    or one that never saw a change)."""
    if committee_path is None and state.settings_path.exists():
        try:
            committee_path = state.load_settings().committee
        except UserError:
            committee_path = None  # fs.toml's own errors are reported where it is loaded for use
    beside = Path(committee_path).parent / CLUSTER_CHAIN if committee_path else None
    return load_chain(committee, state.chain_path, beside)


def fs_client(state: FsState, committee: Committee, writer_key: object | None = None,
              settings: ClientSettings | None = None, committee_path: str | Path | None = None) -> BlobClient:
    """A blob client that starts from the filesystem's chain and saves it in the state directory
    whenever it grows."""
    return BlobClient(fs_chain(state, committee, committee_path), writer_key, settings,
                      save_chain=chain_saver(state.chain_path))


def save_chain(state: FsState, chain: CommitteeChain) -> None:
    """Keep ``chain`` in the state directory (a restore, which creates the directory after the chain
    was fetched)."""
    if chain.links:
        chain_saver(state.chain_path)(chain)


__all__ = ["fs_chain", "fs_client", "save_chain"]
