"""The docs that map claims to tests name only tests that exist, and nothing in the
repository points outside it."""

import re
import subprocess

import pytest

from tests.helpers import ROOT


def defined_tests():
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        names |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    return names


@pytest.mark.parametrize("doc", ["docs/DESIGN.md", "docs/security.md"])
def test_every_test_a_doc_names_exists(doc):
    named = set(re.findall(r"`(test_\w+)`", (ROOT / doc).read_text()))
    assert len(named) > 20
    missing = sorted(named - defined_tests())
    assert not missing, f"{doc} names tests that don't exist: {missing}"


def test_every_invariant_has_tests_or_says_it_is_not_provided():
    text = (ROOT / "docs/DESIGN.md").read_text()
    numbered = re.findall(r"^(\d+)\. \*\*", text, re.M)
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", text, re.M))
    assert numbered and sorted(rows, key=int) == numbered
    for number, tests in rows.items():
        assert "`test_" in tests or "not provided yet" in tests, f"invariant {number} has no test"


OUTSIDE = "../" + "shared"  # spelled so that this file doesn't cite it either


def test_nothing_in_the_repository_cites_the_teams_shared_folder():
    """A user who clones the repository doesn't have it: the design lives in docs/DESIGN.md."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    citing = [name for name in listed if name.endswith((".py", ".lua", ".md", ".js", ".html", ".conf", ".sh"))
              and (ROOT / name).is_file() and OUTSIDE in (ROOT / name).read_text(errors="replace")]
    assert citing == []


def test_the_readme_layout_names_every_module():
    """The layout table is how a newcomer finds a module's layer: a new module must be in it."""
    section = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set()
    for row in re.findall(r"^\| (\w+) \| (.+?) \|", section, re.M):
        _layer, cells = row
        folder = None
        for name in re.findall(r"`([\w/.*]+)`", cells):
            if name.startswith("chatapp/"):
                folder = name.rsplit("/", 1)[0]
                named.add(name)
            elif folder and name.endswith(".py"):
                named.add(f"{folder}/{name}")
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "chatapp").rglob("*.py") if path.name != "__init__.py"}
    assert sorted(modules - named) == []
