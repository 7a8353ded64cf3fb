"""The examples of the README and docs/hunt.md are run, so they cannot go stale.

* A fenced block whose first line is ``$ tdsim ...`` is a command and what it prints: the
  test runs it from the repository root (stdout and stderr, not a terminal) and compares,
  line by line.  A ``wall clock:`` line varies by machine and is compared up to its colon,
  the seconds a hunt took are not compared.
* A ``python`` block is executed.
* A ``toml`` block must parse; one whose first line is ``# <path> (excerpt)`` must also be an
  excerpt of that file (each key it sets has the same value there).

After a change to the model or the output, refresh the printed examples with
``.venv/bin/python tests/test_readme.py --update`` and review the diff.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "hunt.md")  # the documents whose examples are run
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, offset of the body) of every fenced block."""
    return [(m[1], m[2], m.start(2)) for m in FENCE.finditer(text)]


def run_command(command: str) -> str:
    shell = re.sub(r"^(\.venv/bin/)?tdsim ", f"{sys.executable} -m tdsim ", command)
    proc = subprocess.run(shell, shell=True, cwd=ROOT, capture_output=True, text=True)
    return proc.stdout + proc.stderr


def normalise(text: str) -> list[str]:
    """Lines without what varies by machine: the ``wall clock:`` line, and the seconds a
    hunt took (``(0.2 s)``, ``runs in 0.7 s``)."""
    out = []
    for line in text.rstrip("\n").splitlines():
        line = re.sub(r"^(wall clock:).*", r"\1 ...", line.rstrip())
        line = re.sub(r"\(\d+(\.\d+)? s\)", "(... s)", line)
        out.append(re.sub(r"( runs in )\d+(\.\d+)? s$", r"\1... s", line))
    return out


COMMANDS = [(body.splitlines()[0][2:], body) for doc in DOCS
            for lang, body, _ in blocks(doc.read_text())
            if body.startswith("$ tdsim ") or body.startswith("$ .venv/bin/tdsim ")]


def test_the_readme_has_examples():
    """The README shows at least a run and an error."""
    assert len(COMMANDS) >= 2


@pytest.mark.parametrize(("command", "body"), COMMANDS, ids=[c for c, _ in COMMANDS])
def test_printed_example_matches_this_build(command, body):
    """The command prints exactly what the document shows."""
    shown = body.split("\n", 1)[1]
    assert normalise(run_command(command)) == normalise(shown), (
        "example is stale: run `.venv/bin/python tests/test_readme.py --update`")


def test_python_examples_run(monkeypatch):
    """Every python block runs as written (from the repository root)."""
    monkeypatch.chdir(ROOT)
    code = [(doc, body) for doc in DOCS for lang, body, _ in blocks(doc.read_text())
            if lang == "python"]
    assert code
    for doc, body in code:
        exec(compile(body, doc.relative_to(ROOT).as_posix(), "exec"), {})


def test_toml_examples_parse_and_excerpts_match_their_files():
    """Every toml block is TOML; an excerpt is made of lines of the file it names."""
    for lang, body, _ in (b for doc in DOCS for b in blocks(doc.read_text())):
        if lang != "toml":
            continue
        shown = flatten(tomllib.loads(body))
        m = re.match(r"# (\S+) \(excerpt\)\n", body)
        if m:
            source = flatten(tomllib.loads((ROOT / m[1]).read_text()))
            for key, value in shown.items():
                assert source.get(key) == value, f"{m[1]}: {key} = {value!r}"


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in flatten(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {k: v for i, item in enumerate(value)
                for k, v in flatten(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def update() -> None:
    """Rewrite the output of every ``$ tdsim`` block with what this build prints."""
    for doc in DOCS:
        text = doc.read_text()
        out, pos = [], 0
        for _lang, body, start in blocks(text):
            if body.startswith("$ tdsim ") or body.startswith("$ .venv/bin/tdsim "):
                command = body.splitlines()[0]
                out += [text[pos:start], command + "\n",
                        run_command(command[2:]).rstrip("\n") + "\n"]
                pos = start + len(body)
        doc.write_text("".join(out) + text[pos:])


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_readme.py --update")
    update()
