"""Default locations (walrusfs.paths): the state home and the bundled cluster follow $WALRUSFS_HOME,
and are resolved when asked, so that `walrusfs --home DIR` (which sets it) moves both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from walrusfs import paths
from walrusfs.cluster import COMMITTEE_FILE, bundled_file


def test_without_walrusfs_home_both_live_under_the_users_local_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WALRUSFS_HOME", raising=False)
    base = paths.user_home() / ".local/share/walrusfs"
    assert paths.walrusfs_home() == base
    assert paths.fs_home() == base / "fs"
    assert paths.cluster_dir() == base / "cluster"


def test_the_bundled_cluster_follows_walrusfs_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WALRUSFS_HOME", str(tmp_path))
    assert paths.cluster_dir() == tmp_path.resolve() / "cluster"
    assert bundled_file(None, COMMITTEE_FILE) == tmp_path.resolve() / "cluster" / COMMITTEE_FILE
    assert bundled_file(tmp_path / "mine.toml", COMMITTEE_FILE) == tmp_path.resolve() / "mine.toml"


def test_a_home_given_explicitly_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WALRUSFS_HOME", "/nonexistent/elsewhere")
    assert paths.fs_home(tmp_path) == tmp_path.resolve() / "fs"


def test_walrusfs_home_option_moves_the_cluster_the_cluster_commands_use(tmp_path: Path) -> None:
    """`--home` is parsed after the modules are loaded: the cluster commands still follow it."""
    env = {k: v for k, v in os.environ.items() if k != "WALRUSFS_HOME"}
    result = subprocess.run([sys.executable, "-m", "walrusfs.cli", "--home", str(tmp_path), "cluster", "status"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode != 0
    assert f"{tmp_path.resolve() / 'cluster'} is not a cluster directory" in result.stderr
