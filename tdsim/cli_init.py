"""``tdsim init [PATH] [--example NAME]``: write a commented starter scenario.

The starters are the TOML files in ``tdsim/templates/``; each states the question it answers
and explains every key it sets, is valid as written, and meets its own ``[expect]`` table
(tests/test_cli_init.py checks both).
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

from tdsim.scenario import ScenarioError

EXAMPLES = {
    "basic": "one TD on a quiet host: host-state work per TD exit",
    "compare": "the three host-state strategies side by side on an IO-heavy TD",
    "aborts": "refused TD entries and signals: which strategy keeps host state right",
    "interrupts": "NMIs and IPIs: delivery latency, nothing lost",
    "scripted": "a scripted guest making exact GHCI TDVMCALLs",
}


def template(name: str) -> str:
    """The text of starter `name` (one of `EXAMPLES`)."""
    return resources.files("tdsim").joinpath("templates", f"{name}.toml").read_text(
        encoding="utf-8")


def cmd_init(args: argparse.Namespace) -> int:
    """The body of ``tdsim init`` (arguments declared in `tdsim.cli`)."""
    if args.example == "list":
        width = max(map(len, EXAMPLES))
        for name, what in EXAMPLES.items():
            print(f"{name:<{width}}  {what}")
        return 0
    if args.example not in EXAMPLES:
        import difflib

        close = difflib.get_close_matches(args.example, list(EXAMPLES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ScenarioError("--example", args.example, f"no such starter ({hint}known: "
                                                       f"{', '.join(EXAMPLES)})")
    text = template(args.example)
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    from pathlib import Path

    from tdsim.cli_io import check_output_file

    path = Path(args.path)
    if path.exists() and not args.force:
        raise ScenarioError(args.path, "<file>", "already exists: choose another name, or "
                                                 "pass --force to overwrite it")
    check_output_file(args.path, "init")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path} ({args.example}): edit it, then: tdsim run {path}", file=sys.stderr)
    return 0
