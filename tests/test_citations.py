"""The project cites the kernel or its own docs: no issue numbers (history lives in git) and
no sections of a reference document that is not in the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PLACES = ["tdsim", "docs", "scenarios", "studies", "tests", "README.md", "CHANGELOG.md",
          "Makefile", "pyproject.toml"]
FORBIDDEN = re.compile(r"\bissues? ?#?\d+\b|\breference §", re.IGNORECASE)
SUFFIXES = {".py", ".md", ".toml", ".txt", ""}


def files():
    for place in PLACES:
        path = ROOT / place
        if path.is_file():
            yield path
        else:
            yield from (p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                        and "__pycache__" not in p.parts and p.name != "test_citations.py")


def test_no_issue_numbers_nor_private_references():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in files()
             for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if FORBIDDEN.search(line)]
    assert found == []
