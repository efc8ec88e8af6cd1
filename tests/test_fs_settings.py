"""fs.toml (config.py): what mkfs writes reads back, and a file written before a setting existed
still loads, with that setting at its default."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from walrusfs.fs.config import FsSettings, FsState


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
