"""Running simulations from the command line: progress while they run, and Ctrl-C that stops
them cleanly.

`RunControl` is used as a context manager around a command's runs.  Inside it, SIGINT does
not raise: the first Ctrl-C asks the running simulation to stop after the event being
processed (`tdsim.sim.Simulation.request_stop`); the run then returns the results so far,
marked partial, and the command writes them and exits 130.  A second Ctrl-C raises
`KeyboardInterrupt` (quit now, nothing more written).

Progress goes to stderr: a bar with the share of simulated time done and the time left when
stderr is a terminal (shown once a run has taken `BAR_DELAY_S`), else one line every
``every_s`` seconds; nothing with ``--quiet``.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from tdsim.cli_estimate import Estimate, duration_text

if TYPE_CHECKING:
    from tdsim.scenario import Scenario
    from tdsim.sim import Result, Simulation
    from tdsim.trace import Tracer

BAR_DELAY_S = 1.0        # a run shorter than this never shows a bar
LINE_EVERY_S = 10.0      # progress lines when stderr is not a terminal
UPDATE_EVERY_S = 0.25    # aim: one chunk of simulated time per this much wall time
MIN_CHUNKS = 10
MAX_CHUNKS = 1_000_000
MIN_CHUNK_NS = 1_000


def chunk_ns(duration_ns: int, est: Estimate) -> int:
    """Simulated ns per chunk, so that a chunk takes about `UPDATE_EVERY_S` of wall time."""
    chunks = min(max(MIN_CHUNKS, est.wall_s / UPDATE_EVERY_S), MAX_CHUNKS)
    return max(MIN_CHUNK_NS, math.ceil(duration_ns / chunks))


class Progress:
    """The progress display of one run: call it with ``(now_ns, end_ns)`` between chunks."""

    def __init__(self, label: str, mode: str, every_s: float, stream: IO[str]) -> None:
        self.label = label
        self.mode = mode  # "bar", "lines" or "off"
        self.every_s = every_s
        self.stream = stream
        self.t0 = time.perf_counter()
        self.last_line = self.t0
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, now_ns: int, end_ns: int) -> None:
        if self.mode == "off" or end_ns <= 0:
            return
        t = time.perf_counter()
        elapsed = t - self.t0
        share = now_ns / end_ns
        left = elapsed / share * (1 - share) if share > 0 else math.inf
        eta = duration_text(left) if math.isfinite(left) else "?"
        if self.mode == "lines":
            if t - self.last_line >= self.every_s and now_ns < end_ns:
                self.last_line = t
                print(f"tdsim: {self.label}: {100 * share:.1f}% of {end_ns / 1000:,.0f} us "
                      f"simulated, {duration_text(elapsed)} elapsed, about {eta} left",
                      file=self.stream, flush=True)
            return
        if self._bar is None:
            if elapsed < BAR_DELAY_S or now_ns >= end_ns:
                return
            self._start_bar(end_ns)
        self._bar.update(self._task, completed=now_ns, eta=eta, elapsed=duration_text(elapsed))
        self._bar.refresh()

    def _start_bar(self, end_ns: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(),
            TextColumn("{task.percentage:>5.1f}% of simulated time,"),
            TextColumn("{task.fields[elapsed]} elapsed, about {task.fields[eta]} left"),
            console=Console(file=self.stream), transient=True, auto_refresh=False)
        self._bar.start()
        self._task = self._bar.add_task(self.label, total=end_ns, eta="?", elapsed="?")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class RunControl:
    """Runs simulations with progress and a clean Ctrl-C (see the module docstring)."""

    def __init__(self, mode: str, every_s: float = LINE_EVERY_S,
                 stream: IO[str] | None = None) -> None:
        self.mode = mode
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self.interrupted = False
        self._current: Simulation | None = None
        self._previous: Any = None

    def __enter__(self) -> RunControl:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        if self._current is not None:
            self._current.request_stop()
        if self.mode != "off":
            print("\ntdsim: interrupted: stopping at the next event and keeping the results "
                  "so far (Ctrl-C again to quit at once)", file=self.stream, flush=True)

    def run(self, scenario: Scenario, est: Estimate, label: str,
            tracer: Tracer | None = None) -> Result:
        """Run `scenario` (one strategy); partial if Ctrl-C stopped it."""
        from tdsim.sim import Simulation

        sim = Simulation(scenario, tracer)
        self._current = sim
        if self.interrupted:  # Ctrl-C while it was being built
            sim.request_stop()
        progress = Progress(label, self.mode, self.every_s, self.stream)
        try:
            return sim.run(progress=progress, chunk_ns=chunk_ns(sim.duration_ns, est))
        finally:
            progress.close()
            self._current = None

    def rerun(self, est: Estimate, label: str) -> Callable[..., Result]:
        """A `tdsim.explain` re-run function that goes through this control."""

        def rerun(scenario: Scenario, tracer: Tracer | None = None) -> Result:
            return self.run(scenario, est, label, tracer)

        return rerun
