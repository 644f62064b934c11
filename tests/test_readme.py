"""The README is the front door: its file tree lists every file in the repository, and its two
set-up commands are the ones the Makefile and CI actually run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_file_tree_lists_every_tracked_file():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tree = readme.split("## Files", 1)[1]
    listed = {line.split()[0] for line in tree.splitlines() if line.strip() and not line.startswith(("```", "#"))}
    missing = sorted(set(tracked) - listed)
    assert not missing, f"README file tree is missing: {missing}"


def test_setup_commands_are_the_ones_ci_and_make_run():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "make demo " in readme and "make test " in readme
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "\ndemo:" in makefile and "\ntest:" in makefile and "recipes/demo.yaml" in makefile
    assert "make test" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
