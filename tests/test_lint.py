"""Lint and documentation checks that keep the tree honest."""

import subprocess
import sys

from chatapp.ops.config import markdown_table
from tests.helpers import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_settings_table_matches_the_code():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "regenerate it: python -m chatapp.ops.config --update-readme"
