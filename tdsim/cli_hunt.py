"""``tdsim hunt``: search a scenario's schedules for a counterexample (`tdsim.hunt`), write
the shrunk reproducer, and say what happened or how much was covered.

Order of work, as for ``tdsim run``: every input is read and checked first (the scenario or
study, the strategies, the oracle names, the output path), then the hunts run, one per
strategy (and per design point of a study), each for ``--budget`` seconds with a progress
line on stderr.  Exit status: 0 no counterexample, 1 one or more found (reproducers
written), 2 bad input, 130 interrupted (Ctrl-C: the hunt running stops and reports what
it covered; the others do not run).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tdsim.cli_io import check_output_dir, check_output_file, write_atomically
from tdsim.scenario import Scenario, ScenarioError, load_scenario

EXIT_NONE, EXIT_FOUND, EXIT_INTERRUPTED = 0, 1, 130
LINE_EVERY_S = 10.0


@dataclass
class Job:
    """One hunt to run: a label, the scenario, the strategy, where its reproducer goes."""

    label: str
    scenario: Scenario
    strategy: str
    out: Path


def cmd_hunt(args: argparse.Namespace) -> int:
    """The body of ``tdsim hunt`` (the arguments are declared in `tdsim.cli`)."""
    from tdsim.findings import NAMES
    from tdsim.hunt import MODES, hunt

    oracles = [o.strip() for item in (args.oracle or []) for o in item.split(",") if o.strip()]
    for name in oracles:
        if name not in NAMES:
            from difflib import get_close_matches

            close = get_close_matches(name, sorted(NAMES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ScenarioError("--oracle", name, f"not an oracle or invariant tdsim checks{hint}")
    if args.budget <= 0:
        raise ScenarioError("--budget", str(args.budget), "must be > 0 seconds")
    if args.mode not in MODES:  # (argparse checks it; the API does too)
        raise ScenarioError("--mode", args.mode, f"not one of {', '.join(MODES)}")
    for option in ("entries", "depth", "vcpus", "max_events", "max_runs"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ScenarioError(f"--{option.replace('_', '-')}", str(value), "must be >= 1")
    jobs = _jobs(args)
    command = _command(args)
    total = len(jobs)
    found = 0
    summary = []
    for i, job in enumerate(jobs):
        progress = _Progress(args, job.label if total > 1 else "hunt", sys.stderr)
        result = hunt(job.scenario, job.strategy, oracles, args.budget, args.seed, args.mode,
                      args.entries, args.max_events, args.depth, args.vcpus, args.max_runs,
                      progress=progress)
        progress.close()
        if result.found:
            from tdsim.hunt_report import reproducer_text

            write_atomically(str(job.out), reproducer_text(result, command))
            found += 1
        if not args.quiet:
            _print_result(result, job, command, sys.stdout, first=i == 0)
        if result.interrupted:
            print("tdsim: interrupted: the coverage so far is above"
                  + (f"; reproducer in {job.out}" if result.found else ""), file=sys.stderr)
            return EXIT_INTERRUPTED
        if result.found and result.candidate is not None:
            n = len(result.candidate.events)
            summary.append(f"  {job.label}: {result.oracle} ({n} event{'s' if n != 1 else ''}"
                           f") -> {job.out}")
        else:
            summary.append(f"  {job.label}: none ({result.runs:,} runs)")
    if total > 1 and not args.quiet:
        print(f"\n{found} of {total} hunts found a counterexample")
        print("\n".join(summary))
    return EXIT_FOUND if found else EXIT_NONE


def _jobs(args: argparse.Namespace) -> list[Job]:
    """The hunts the command line asks for: one per strategy (``--strategy a,b`` or the
    scenario's), or for a study file one per strategy and design point."""
    path = Path(args.scenario)
    strategies = [s.strip() for s in (args.strategy or "").split(",") if s.strip()]
    overrides = list(args.overrides or [])
    if _is_study(path):
        return _study_jobs(args, path, strategies, overrides)
    scenario = load_scenario(path, overrides)
    if not strategies:  # as `tdsim run`: each compared strategy, else the scenario's
        strategies = list(scenario.data["kvm"]["compare"]) or [
            scenario.data["kvm"]["host_state"]]
    for s in strategies:  # a bad strategy is bad input before any hunt
        scenario.replace([f"kvm.host_state={s}"])
    several = len(strategies) > 1
    outs = _outputs(args, several, [f"{path.stem}-{_slug(s)}" for s in strategies])
    return [Job(s, scenario, s, out) for s, out in zip(strategies, outs, strict=True)]


def _study_jobs(args: argparse.Namespace, path: Path, strategies: list[str],
                overrides: list[str]) -> list[Job]:
    """A study file: hunt its base scenario under each of its strategies (or ``--strategy``)
    at each of its design points (factors and overrides applied, first seed)."""
    from tdsim.study.design import StudyError
    from tdsim.study.runner import run_overrides
    from tdsim.study.spec import load_study

    try:
        study = load_study(path)
    except StudyError as e:
        raise ScenarioError(str(path), "<study>", str(e)) from None
    jobs = []
    names = []
    points = study.points()
    for point in points:
        for strategy in strategies or list(study.strategies):
            ov: dict[str, Any] = run_overrides(study, point, strategy, 0)
            scenario = load_scenario(study.scenario_path, ov)
            if overrides:
                scenario = scenario.replace(overrides)
            where = study.point_label(point) if len(points) > 1 else ""
            label = f"{strategy} at {where}" if where else strategy
            jobs.append(Job(label, scenario, strategy, Path()))
            names.append(f"{path.stem}-{_slug(strategy)}"
                         + (f"-p{point.index}" if len(points) > 1 else ""))
    for job, out in zip(jobs, _outputs(args, True, names), strict=True):
        job.out = out
    return jobs


def _outputs(args: argparse.Namespace, several: bool, stems: list[str]) -> list[Path]:
    """Where each hunt's reproducer goes: ``--out FILE`` for one hunt, ``--out DIR`` (made
    if needed) for several; by default ``hunt-<scenario>-<strategy>.toml`` in the current
    directory."""
    if args.out is not None and several:
        if args.out.endswith(".toml"):
            raise ScenarioError("--out", args.out, f"{len(stems)} hunts write {len(stems)} "
                                "reproducers: give a directory (or one --strategy)")
        check_output_dir(args.out, "--out")
        Path(args.out).mkdir(parents=True, exist_ok=True)
        return [Path(args.out) / f"hunt-{stem}.toml" for stem in stems]
    if args.out is not None:
        check_output_file(args.out, "--out", inputs=[args.scenario])
        return [Path(args.out)]
    outs = [Path(f"hunt-{stem}.toml") for stem in stems]
    for out in outs:
        check_output_file(str(out), "--out", inputs=[args.scenario])
    return outs


def _is_study(path: Path) -> bool:
    """A study file names its base scenario at the top level (a scenario never does)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False  # load_scenario reports it
    return isinstance(raw.get("scenario"), str)


def _slug(strategy: str) -> str:
    """A strategy as part of a file name (a user's ``file.py:Class`` -> ``Class``)."""
    name = strategy.rpartition(":")[2] or strategy
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces the hunt (for the reproducer's header)."""
    parts = ["tdsim hunt", Path(args.scenario).name]
    if args.strategy:
        parts.append(f"--strategy {args.strategy}")
    for o in args.oracle or []:
        parts.append(f"--oracle {o}")
    if args.mode != "random":
        parts.append(f"--mode {args.mode}")
    parts.append(f"--seed {args.seed}")
    return " ".join(parts)


# --- output -----------------------------------------------------------------------------------
def _print_result(result: Any, job: Job, command: str, out: IO[str], first: bool) -> None:
    from tdsim.findings import NAMES
    from tdsim.hunt_report import coverage_lines

    if not first:
        print(file=out)
    left_out = sorted(NAMES - set(result.oracles))
    what = ("all oracles" if not left_out else ", ".join(result.oracles)
            if len(result.oracles) <= 10 else "all oracles but " + ", ".join(left_out))
    print(f"tdsim hunt {Path(job.scenario.path).name}  strategy {job.label}  seed "
          f"{result.seed}  {result.mode} search  ({what})", file=out)
    if not result.found:
        whole = result.space_total and result.space_done == result.space_total
        where = ("before the interrupt" if result.interrupted else
                 "in the whole space" if whole else "within budget")
        print(f"no counterexample {where}: {result.runs:,} runs in {result.elapsed_s:.1f} s",
              file=out)
        for line in coverage_lines(result):
            print(line, file=out)
        return
    cand = result.candidate
    vcpus = sum(cand.vcpus)
    n = len(cand.events)
    print(f"found {result.oracle} after {result.runs - result.shrink_runs:,} runs "
          f"({result.found_s:.1f} s); shrunk in {result.shrink_runs:,} runs to {n} injected "
          f"event{'s' if n != 1 else ''}, {vcpus} vCPU{'s' if vcpus != 1 else ''}", file=out)
    print(f"reproducer: {job.out}  (tdsim run it; tdsim check guards it)", file=out)
    for e in result.reproducer.get("schedule", {}).get("event", []):
        print("  " + _event_line(e), file=out)
    print(textwrap.fill(result.explanation, 100), file=out)


def _event_line(e: dict[str, Any]) -> str:
    """One event of a reproducer, as listed under its path: who, where, what."""
    who = e["vcpu"] if "vcpu" in e else f"cpu{e['cpu']}"
    where = (f"t={e['t_ns']} ns" if "t_ns" in e
             else f"entry {e['entry']}  {e.get('at', 'seamcall')}")
    delay = f" +{e['delay_ns']} ns" if e.get("delay_ns") else ""
    detail = f" detail={e['detail']:#x}" if "detail" in e else ""
    return f"{who}  {where}{delay}  {e['kind']}{detail}"


class _Progress:
    """The progress line on stderr: rewritten in place on a terminal, else one line every
    ``--progress-every`` seconds (10 by default); nothing with --quiet."""

    def __init__(self, args: argparse.Namespace, label: str, stream: IO[str]) -> None:
        self.stream = stream
        self.label = label
        self.mode = "off" if args.quiet else ("tty" if stream.isatty() else "lines")
        self.every = LINE_EVERY_S if args.progress_every is None else args.progress_every
        self.last = time.monotonic()
        self.shown = False

    def __call__(self, p: Any) -> None:
        if self.mode == "off" or p.phase == "done":
            return
        left = max(0.0, p.budget_s - p.elapsed_s)
        best = p.best or "none yet"
        space = (f"  {p.space_done:,}/{p.space_total:,} schedules" if p.space_total else "")
        text = (f"{self.label}: {p.runs:,} runs{space}  best: {best}  "
                f"{'shrinking' if p.phase == 'shrink' else f'{left:.0f} s left'}")
        if self.mode == "tty":
            self.stream.write("\r" + text[:118].ljust(118))
            self.stream.flush()
            self.shown = True
        elif time.monotonic() - self.last >= self.every:
            self.last = time.monotonic()
            print(text, file=self.stream)

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 118 + "\r")
            self.stream.flush()
