"""uvicorn and granian are an optional extra (walrusfs[servers]), kept for comparison benchmarks: the
node runs without them, and choosing one that is not installed is a clear error, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from walrusfs.cluster import init_cluster

# A node process in which the comparison servers cannot be imported, as in a default install.
WITHOUT_EXTRAS = ("import sys; sys.modules['uvicorn'] = sys.modules['granian'] = None; "
                  "from nodes.server import main; sys.exit(main(sys.argv[1:]))")


def test_choosing_a_server_that_is_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    init_cluster(tmp_path, nodes=1, shards=4, base_port=20000)
    for server in ("uvicorn", "granian"):
        result = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, "--config", str(tmp_path / "node-0/config.toml"),
                                 "--server", server], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"--server {server} needs {server}, which is not installed" in result.stderr
        assert "pip install 'walrusfs[servers]'" in result.stderr
        assert "Traceback" not in result.stderr


def test_the_node_and_its_cli_do_not_import_the_comparison_servers() -> None:
    code = ("import sys; import nodes.server, walrusfs.bench.node; "
            "print(sorted(m for m in ('uvicorn', 'granian') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
