"""fs.toml (config.py): what mkfs writes reads back, and a file written before a setting existed
still loads, with that setting at its default."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import pytest

from walrusfs.errors import UserError
from walrusfs.fs.config import FsSettings, FsState
from walrusfs.fs.mkfs import blob_term_days


def test_settings_round_trip_through_fs_toml_including_booleans(tmp_path: Path) -> None:
    settings = replace(FsSettings(fs_id="ab" * 16, committee="/c.toml", writer_key="/w.key"),
                       cache_after_upload=False, upload_delay=0.5)
    (tmp_path / "fs.toml").write_text(settings.dump())
    assert "cache_after_upload = false" in settings.dump()
    assert FsState(tmp_path).load_settings() == settings


def test_an_fs_toml_without_cache_after_upload_keeps_filling_the_cache(tmp_path: Path) -> None:
    written_by_older_walrusfs = 'fs_id = "cd"\ncommittee = "/c.toml"\nwriter_key = "/w.key"\nupload_delay = 2.0\n'
    (tmp_path / "fs.toml").write_text(written_by_older_walrusfs)
    assert FsState(tmp_path).load_settings().cache_after_upload is True


def test_an_fs_toml_without_blob_term_days_asks_the_nodes_for_a_year(tmp_path: Path) -> None:
    written_before_claims = 'fs_id = "cd"\ncommittee = "/c.toml"\nwriter_key = "/w.key"\nencryption = "none"\n'
    (tmp_path / "fs.toml").write_text(written_before_claims)
    assert FsState(tmp_path).load_settings().blob_term_days == 365.0
    settings = replace(FsSettings(fs_id="ab" * 16, committee="/c.toml", writer_key="/w.key"), blob_term_days=30.5)
    (tmp_path / "fs.toml").write_text(settings.dump())
    assert FsState(tmp_path).load_settings().blob_term_days == 30.5


def test_mkfs_takes_the_blob_term_and_refuses_a_term_that_is_not_positive(tmp_path: Path) -> None:
    assert blob_term_days(argparse.Namespace(blob_term_days=90.0)) == 90.0
    assert blob_term_days(argparse.Namespace()) == 365.0  # callers that predate the option
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(UserError, match="--blob-term-days must be a positive number"):
            blob_term_days(argparse.Namespace(blob_term_days=bad))
