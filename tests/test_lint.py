"""Lint and documentation checks that keep the tree honest."""

import subprocess
import sys
from pathlib import Path

from chatapp.ops.config import markdown_table
from tests.helpers import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: python -m chatapp.ops.config --update-readme"


def test_imports_keep_the_layers():
    """pyproject.toml's import-linter contracts: each package of chatapp imports only the layers
    below it, nothing below the web layer imports Flask, and core imports no Redis."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
