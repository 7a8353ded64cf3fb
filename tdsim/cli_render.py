"""Drawing summary blocks (`tdsim.cli_summary`): rich tables on a terminal, plain text
everywhere else.

Plain text is for pipes, files and CI logs: every cell in full whatever its width (no
wrapping, no ``…``), columns aligned with spaces under a dashed rule, no colour, no box
characters.  On a terminal, rich draws the tables; a cell too wide for the terminal folds onto
the next line instead of being cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

from tdsim.cli_summary import Block, Line


def plain(blocks: Sequence[Block]) -> str:
    """`blocks` as plain text, one table or line after another, nothing truncated."""
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Line):
            out.append(block.text)
            continue
        widths = [max([len(c)] + [len(r[i]) for r in block.rows])
                  for i, c in enumerate(block.columns)]
        left = [i == 0 or c in block.text for i, c in enumerate(block.columns)]

        def row(cells: Sequence[str], widths: list[int] = widths,
                left: list[bool] = left) -> str:
            return "  ".join(c.ljust(w) if lt else c.rjust(w)
                             for c, w, lt in zip(cells, widths, left, strict=True)).rstrip()

        if block.title:
            out.append(block.title)
        out.append(row(block.columns))
        out.append("  ".join("-" * w for w in widths))
        out += [row(r) for r in block.rows]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def render(blocks: Sequence[Block], stream: IO[str], terminal: bool | None = None) -> None:
    """Write `blocks` to `stream`: rich when it is a terminal (or `terminal` says so), plain
    text otherwise."""
    if terminal is None:
        terminal = stream.isatty()
    if not terminal:
        stream.write(plain(blocks))
        stream.flush()
        return
    from rich.console import Console

    render_rich(blocks, Console(file=stream))


def render_rich(blocks: Sequence[Block], console: Any) -> None:
    """Draw `blocks` on a `rich.console.Console`."""
    from rich.table import Table as RichTable

    for block in blocks:
        if isinstance(block, Line):
            console.print(block.text, style=block.style or None, markup=False,
                          highlight=False)
            continue
        table = RichTable(title=block.title or None, title_justify="left")
        for i, col in enumerate(block.columns):
            table.add_column(col, justify="left" if i == 0 or col in block.text else "right",
                             overflow="fold")
        for r in block.rows:
            table.add_row(*r)
        console.print(table)
