"""Progress of a study on stderr: a live bar on a terminal, a line every `every_s` seconds
otherwise (a CI log, ``2> study.log``), nothing when asked.

The remaining time is for the whole study.  A fixed-count study knows its total from the
start.  A sequential one knows it once every group's first stage has finished; until then the
second stages of the undecided groups are projected from the groups already decided (as many
extra runs per group, on average), and the line says "projected".
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, Literal, TextIO

Mode = Literal["bar", "lines", "off"]


def default_mode(stream: TextIO) -> Mode:
    return "bar" if stream.isatty() else "lines"


def _clock_text(seconds: float) -> str:
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Counts finished runs against the (projected) whole-study total."""

    def __init__(self, name: str, mode: Mode = "off", *, stream: TextIO | None = None,
                 every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.mode = mode
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.clock = clock
        self.done = 0
        self.errors = 0
        self.reused = 0
        self.known = 0          # runs scheduled so far (first stages, decided second stages)
        self.groups = 0         # sequential groups in all
        self.decided: list[int] = []  # extra runs of each decided group
        self.second_stage_scheduled = False
        self._t0 = clock()
        self._last = -float("inf")
        self._bar: Any = None

    # --- what the runner tells us ---------------------------------------------------------
    def schedule(self, runs: int, reused: int = 0) -> None:
        """`runs` more runs will execute now; `reused` came from the store."""
        self.known += runs
        self.reused += reused
        self._update_bar()

    def expect_groups(self, groups: int) -> None:
        """A sequential study: `groups` groups will each decide their second stage."""
        self.groups = groups

    def decided_group(self, extra_runs: int) -> None:
        """One group's first stage finished; it needs `extra_runs` more runs."""
        self.decided.append(extra_runs)
        self._update_bar()

    def schedule_second_stage(self, runs: int) -> None:
        """Every group has decided; `runs` second-stage runs execute now."""
        self.second_stage_scheduled = True
        self.schedule(runs)

    def advance(self, row: dict[str, Any]) -> None:
        self.done += 1
        self.errors += row["status"] != "ok"
        now = self.clock()
        if self.mode == "bar":
            self._update_bar()
        elif self.mode == "lines" and (now - self._last >= self.every_s
                                       or self.done == self.total):
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    # --- what we say ----------------------------------------------------------------------
    @property
    def projected(self) -> bool:
        return (self.groups > 0 and len(self.decided) < self.groups
                and not self.second_stage_scheduled)

    @property
    def total(self) -> int:
        """Runs to execute in the whole study (projected while groups are undecided)."""
        if self.second_stage_scheduled:
            return self.known
        undecided = max(0, self.groups - len(self.decided))
        per_group = (sum(self.decided) / len(self.decided)) if self.decided else 0.0
        return self.known + sum(self.decided) + round(undecided * per_group)

    def eta_s(self) -> float | None:
        if self.done == 0:
            return None
        elapsed = self.clock() - self._t0
        return elapsed / self.done * max(0, self.total - self.done)

    def line(self) -> str:
        total = max(self.total, self.done)
        pct = 100 * self.done / total if total else 100.0
        elapsed = self.clock() - self._t0
        eta = self.eta_s()
        left = "ETA unknown" if eta is None else f"about {_clock_text(eta)} left"
        scope = " (projected)" if self.projected else ""
        reused = f", {self.reused} reused" if self.reused else ""
        return (f"{self.name}: {self.done}/{total} runs ({pct:.0f}%), {self.errors} failed"
                f"{reused}, {_clock_text(elapsed)} elapsed, {left} for the whole study"
                f"{scope}")

    # --- the terminal bar -----------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[errors]} failed"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(file=self.stream),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.name, total=0, errors=0)
        return self

    def _update_bar(self) -> None:
        if self._bar is None:
            return
        desc = self.name + (f" ({self.reused} reused)" if self.reused else "")
        desc += " (total projected)" if self.projected else ""
        self._bar.update(self._task, total=max(self.total, self.done), completed=self.done,
                         errors=self.errors, description=desc)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
