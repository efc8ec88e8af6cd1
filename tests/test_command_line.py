"""The ``walrusfs`` command as documentation and tooling see it: the man page is current, the bash
completion completes, ``--help`` stays fast, and the package builds without setuptools warnings."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from walrusfs.cli import build_parser, command_of, package_version
from walrusfs.completion import bash_script
from walrusfs.manpage import manpage

ROOT = Path(__file__).resolve().parent.parent
WALRUSFS = [sys.executable, "-m", "walrusfs.cli"]


def test_the_man_page_in_docs_is_the_generated_one() -> None:
    current = manpage(build_parser(), package_version())
    assert (ROOT / "docs" / "walrusfs.1").read_text() == current, (
        "docs/walrusfs.1 is out of date: python -m walrusfs.manpage > docs/walrusfs.1")


def test_the_man_page_names_every_command_and_option() -> None:
    page = manpage(build_parser(), package_version())
    for heading in ("walrusfs mount", "walrusfs umount", "walrusfs mkfs", "walrusfs cluster up", "walrusfs fsck"):
        assert f".SS {heading.replace('-', chr(92) + '-')}\n" in page
    for option in ("nonempty", "allow_other", "home=DIR", "\\-\\-lazy", "\\-\\-offline", "WALRUSFS_HOME"):
        assert option in page
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True, timeout=30,
                                  env=dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING=""))
        assert rendered.returncode == 0 and "warning" not in rendered.stderr, rendered.stderr
        assert "mount -t walrusfs NAME DIR" in rendered.stdout


def complete(line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end) with the generated script loaded."""
    words = line.split(" ")
    script = bash_script(build_parser())
    program = (script + "\nCOMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + f")\nCOMP_CWORD={len(words) - 1}\n"
               "_walrusfs\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "WALRUSFS_HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    return [word for word in result.stdout.splitlines() if word]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_mount_options() -> None:
    assert complete("walrusfs mo") == ["mount"]
    assert sorted(complete("walrusfs cluster ")) == ["add", "change", "down", "init", "repair-status", "retire",
                                                     "status", "up"]
    assert complete("walrusfs umount --la") == ["--lazy"]
    assert complete("walrusfs --vers") == ["--version"]
    assert complete("walrusfs mount NAME /mnt -o ro,non") == ["ro,nonempty"]
    assert "home=" in complete("walrusfs mount NAME /mnt -o ")


def test_completion_command_prints_the_script() -> None:
    result = subprocess.run([*WALRUSFS, "completion", "bash"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "complete -o filenames -F _walrusfs walrusfs" in result.stdout


def test_help_stays_fast() -> None:
    """The man page and completion are generated on demand, not at every start (generous bound: the
    machine is shared)."""
    started = time.monotonic()
    result = subprocess.run([*WALRUSFS, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--version" in result.stdout
    assert time.monotonic() - started < 10


# What a light start must not pay for: the codec, FUSE, the async stack, the HTTP client, the node.
HEAVY = ("numpy", "pyfuse3", "trio", "uvicorn", "httpx", "nodes")
IMPORTS_AFTER = """
import runpy, sys
sys.argv = ["walrusfs", *sys.argv[1:]]
try:
    runpy.run_module("walrusfs.cli", run_name="__main__")
except SystemExit:
    pass
print(" ".join(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["-v", "--home", "/tmp", "status", "--help"],
                                  ["no-such-command"]])
def test_help_and_version_import_nothing_heavy(argv: list[str]) -> None:
    """Subcommands are registered lazily: only the module of the command that runs is imported."""
    result = subprocess.run([sys.executable, "-c", IMPORTS_AFTER, *argv], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    imported = set(result.stderr.splitlines()[-1].split())
    assert "walrusfs" in imported and not imported & set(HEAVY), imported & set(HEAVY)


def test_lazy_help_lists_what_the_full_parser_has() -> None:
    """Each command's summary in walrusfs.cli.COMMANDS is the one its module registers, in the same order."""
    def summaries(parser) -> list[tuple[str, str]]:
        [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        return [(action.dest, action.help) for action in commands._choices_actions]

    assert summaries(build_parser(None)) == summaries(build_parser())
    assert build_parser(None).format_help() == build_parser().format_help()
    for command in ("mount", "cluster", "status"):
        assert summaries(build_parser(command)) == summaries(build_parser())
    assert command_of(["-v", "--home", "mount", "status", "x"]) == "status"
    assert command_of(["--home=/x", "--", "mount"]) == "mount"
    assert command_of(["--help"]) is None and command_of(["nonsense"]) is None


@pytest.mark.slow
def test_the_package_builds_without_setuptools_warnings(tmp_path: Path) -> None:
    """pip builds the wheel (in isolation, with the setuptools pyproject.toml asks for) with no
    deprecation warning, e.g. for project.license given as a table."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__",
                                                                "tests", ".pytest_cache", ".ruff_cache"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w", str(tmp_path / "out"),
                             str(source)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0 and "No matching distribution" in result.stdout + result.stderr:
        pytest.skip("no package index to fetch the build backend from")
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "Warning:" not in said and "deprecated" not in said.lower(), [
        line for line in said.splitlines() if "arning" in line or "deprecated" in line.lower()]
