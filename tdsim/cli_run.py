"""``tdsim run``: one or more scenarios, each once or once per compared strategy.

Order of work, so that bad input never costs a run and a run is never lost to bad input:

1. read and validate every scenario (user strategies imported), and every option against
   them (``--log-cpu`` against ``host.cpus``, ``--log-vcpu`` against the vCPU names, ...);
2. check that every output path can be written;
3. estimate the work (`tdsim.cli_estimate`): refuse a run that would take more than an hour
   unless ``--allow-long``, say how long one of more than a minute will take;
4. run, with progress on stderr; Ctrl-C stops at the next event and keeps what was done
   (`tdsim.cli_control`);
5. write ``--json``, ``--log``, ``--trace``; print the summary (``--format``).

Exit status: 0 ok; 1 some run recorded invariant violations; 2 bad input (nothing run, nothing
written); 130 interrupted (the results so far are written, marked ``"partial": true``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tdsim._version import __version__
from tdsim.cli_control import LINE_EVERY_S, RunControl
from tdsim.cli_estimate import (
    REFUSE_WALL_S,
    WARN_WALL_S,
    Estimate,
    duration_text,
    estimate,
    physical_memory,
    size_text,
)
from tdsim.cli_io import check_distinct, check_output_file, logger, write_atomically
from tdsim.scenario import Scenario, ScenarioError, load_scenario

EXIT_OK, EXIT_VIOLATIONS, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Outcome:
    """The runs of one scenario: one result, or one per compared strategy."""

    scenario: Scenario
    results: dict[str, Any] = field(default_factory=dict)  # strategy -> tdsim.sim.Result
    compared: bool = False
    tracer: Any = None

    @property
    def partial(self) -> bool:
        wanted = self.scenario.data["kvm"]["compare"] or [None]
        return len(self.results) < len(wanted) or any(r.partial for r in self.results.values())

    @property
    def violations(self) -> bool:
        return any(r.violations for r in self.results.values())

    def document(self) -> dict[str, Any]:
        """The result document (``--json``) of this scenario's run(s)."""
        if not self.compared:
            doc: dict[str, Any] = next(iter(self.results.values())).to_dict()
            if self.partial:
                doc["partial"] = True
            return doc
        doc = {"tdsim_version": __version__,
               "comparison": {s: r.to_dict() for s, r in self.results.items()}}
        return {"partial": True, **doc} if self.partial else doc


def cmd_run(args: argparse.Namespace) -> int:
    """The body of ``tdsim run`` (the arguments are declared in `tdsim.cli`)."""
    _check_flags(args)
    overrides = list(args.overrides or [])
    if args.seed is not None:
        overrides.append(f"sim.seed={args.seed}")
    if args.compare is not None:
        strategies = [s.strip() for s in args.compare.split(",") if s.strip()]
        if not strategies:
            raise ScenarioError("--compare", repr(args.compare), "names no strategy: give "
                                "one or more, comma-separated (--compare current,eager)")
        overrides.append("kvm.compare=[" + ",".join(json.dumps(s) for s in strategies) + "]")
    scenarios = [load_scenario(path, overrides) for path in args.scenarios]
    filters = _log_filters(args, scenarios)
    traced = args.log is not None or args.trace is not None
    if traced and scenarios[0].data["kvm"]["compare"]:
        raise ScenarioError(scenarios[0].path, "--log/--trace", "not available with a "
                            "strategy comparison (kvm.compare): run one strategy")
    check_distinct({"--json": args.json, "--log": args.log, "--trace": args.trace})
    for option in ("json", "log", "trace"):
        target = getattr(args, option)
        if target is not None:
            check_output_file(target, f"--{option}", inputs=args.scenarios)
    estimates = [_guard(s, traced, args) for s in scenarios]

    outcomes: list[Outcome] = []
    every = LINE_EVERY_S if args.progress_every is None else args.progress_every
    with RunControl(_progress_mode(args), every) as control:
        for scenario, est in zip(scenarios, estimates, strict=True):
            if control.interrupted:
                break
            outcomes.append(_run_one(control, scenario, est, filters, args.log is not None,
                                     args.trace is not None, args.explain))
    interrupted = control.interrupted or any(o.partial for o in outcomes)

    doc = _document(outcomes, len(scenarios))
    if args.json is not None:
        write_atomically(args.json, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    summary_stream: IO[str] = sys.stdout
    if traced and outcomes:
        summary_stream = _write_observability(args, outcomes[0], filters)
    _print(args, outcomes, doc, summary_stream)
    if interrupted:
        where = f"written to {args.json}" if args.json else "above"
        print(f"tdsim: interrupted: the results so far are {where} (marked partial)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_VIOLATIONS if any(o.violations for o in outcomes) else EXIT_OK


def _check_flags(args: argparse.Namespace) -> None:
    """Options that contradict each other or do nothing (one line each, exit status 2)."""
    many = len(args.scenarios) > 1
    for option in ("json", "trace"):
        if getattr(args, option) == "-":
            raise ScenarioError(f"--{option}", "-", "writes a file; for the result document "
                                                    "on stdout use --format json")
    for option in ("log", "trace"):
        if getattr(args, option) is not None and many:
            raise ScenarioError(f"--{option}", getattr(args, option), f"takes one scenario "
                                f"(got {len(args.scenarios)}): run them one at a time")
    if args.log is None:
        for option in ("log_kind", "log_cpu", "log_vcpu"):
            if getattr(args, option):
                flag = "--" + option.replace("_", "-")
                raise ScenarioError(flag, ",".join(getattr(args, option)),
                                    "filters the event log: it needs --log FILE")
    if args.quiet and args.format != "table":
        raise ScenarioError("--quiet", f"--format {args.format}", "contradict each other: "
                            f"--format {args.format} prints the results on stdout")
    if args.log == "-" and args.format != "table":
        raise ScenarioError("--log", "-", f"the event log and --format {args.format} would "
                                          "both go to stdout")
    if args.explain is not None and args.explain < 1:
        raise ScenarioError("--explain", str(args.explain), "is a row of the violations "
                                                             "table: 1 or more")
    if args.progress_every is not None and not args.progress_every >= 0:
        raise ScenarioError("--progress-every", str(args.progress_every),
                            "must be a number of seconds >= 0")


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _log_filters(args: argparse.Namespace, scenarios: list[Scenario]) -> dict[str, Any]:
    """The --log-kind/--log-cpu/--log-vcpu filters, checked against the event kinds and the
    scenario's CPUs and vCPUs (a filter that can match nothing is bad input)."""
    from tdsim.trace import EVENT_KINDS

    kinds = _split(args.log_kind)
    unknown = sorted(set(kinds) - EVENT_KINDS.keys())
    where = str(args.scenarios[0])
    if unknown:
        raise ScenarioError(where, "--log-kind", f"unknown event kind(s) "
                            f"{', '.join(unknown)} (known: {', '.join(EVENT_KINDS)})")
    cpus = _split(args.log_cpu)
    if not all(c.isdigit() for c in cpus):
        raise ScenarioError(where, "--log-cpu", f"expected CPU numbers, got "
                                                f"{','.join(cpus)}")
    vcpus = _split(args.log_vcpu)
    if scenarios and (cpus or vcpus):
        data = scenarios[0].data
        n = data["host"]["cpus"]
        for c in map(int, cpus):
            if c >= n:
                raise ScenarioError(where, "--log-cpu", f"CPU {c} does not exist: host.cpus "
                                                        f"= {n} (valid 0..{n - 1})")
        names = [f"{vm['name']}.vcpu{i}" for vm in data["vm"] for i in range(vm["vcpus"])]
        names += [f"task{i}" for i in range(data["host"]["tasks"])]
        for name in vcpus:
            if name not in names:
                import difflib

                close = difflib.get_close_matches(name, names, n=1)
                hint = (f"did you mean {close[0]!r}?" if close else
                        f"this scenario has {', '.join(names[:8])}"
                        + (", ..." if len(names) > 8 else ""))
                raise ScenarioError(where, "--log-vcpu", f"no vCPU or host task named "
                                                         f"{name!r} ({hint})")
    return {"kinds": kinds, "cpus": [int(c) for c in cpus], "vcpus": vcpus}


def _guard(scenario: Scenario, traced: bool, args: argparse.Namespace) -> Estimate:
    """Estimate the scenario's runs; refuse (ScenarioError) or warn when they are long."""
    one = estimate(scenario.data, traced)
    runs = max(1, len(scenario.data["kvm"]["compare"]))
    est = Estimate(one.events * runs, one.td_exits * runs, one.wall_s * runs,
                   one.memory_bytes, one.key)
    return check_work(scenario, est, args.allow_long, quiet=args.quiet)


def check_work(scenario: Scenario, est: Estimate, allow_long: bool, quiet: bool) -> Estimate:
    """Refuse work above the thresholds unless `allow_long`; note long work on stderr."""
    ram = physical_memory()
    if not allow_long:
        if est.memory_bytes > ram:
            raise ScenarioError(scenario.path, est.key, f"this run would need about "
                                f"{size_text(est.memory_bytes)} of memory (this machine has "
                                f"{size_text(ram)}): make it smaller, or pass --allow-long")
        if est.wall_s > REFUSE_WALL_S:
            raise ScenarioError(scenario.path, est.key, f"this run would take about "
                                f"{duration_text(est.wall_s)} (estimated {est.events:.2g} "
                                "SimPy events): shorten it, or pass --allow-long")
    if est.wall_s > WARN_WALL_S and not quiet:
        print(f"tdsim: note: {scenario.path}: this run will take about "
              f"{duration_text(est.wall_s)} (estimated {est.events:.2g} SimPy events); "
              "Ctrl-C stops it and keeps the results so far", file=sys.stderr)
    return est


def _progress_mode(args: argparse.Namespace) -> str:
    if args.quiet:
        return "off"
    if args.progress_every is not None:
        return "lines"
    return "bar" if sys.stderr.isatty() else "lines"


def _run_one(control: RunControl, scenario: Scenario, est: Estimate,
             filters: dict[str, Any], log: bool, timeline: bool,
             explain_row: int | None = None) -> Outcome:
    """Run `scenario` (once per compared strategy); explain its violations (the chain of
    row `explain_row` of the violations table in full)."""
    from tdsim.cli_summary import group_violations
    from tdsim.explain import explain

    def full(result: Any) -> list[int]:
        groups = group_violations(result.violations)
        if explain_row is None or not 1 <= explain_row <= len(groups):
            return []
        first = groups[explain_row - 1][0]
        return [next(i for i, v in enumerate(result.violations) if v is first)]

    name = Path(scenario.path).name
    compare = scenario.data["kvm"]["compare"]
    outcome = Outcome(scenario, compared=bool(compare))
    if compare:
        per = Estimate(est.events / len(compare), est.td_exits / len(compare),
                       est.wall_s / len(compare), est.memory_bytes, est.key)
        for strategy in compare:
            if control.interrupted:
                break
            variant = scenario.replace({"kvm.host_state": strategy, "kvm.compare": []})
            result = control.run(variant, per, f"{name} [{strategy}]")
            outcome.results[strategy] = result
            if not result.partial:
                explain(variant, result, rerun=control.rerun(
                    per, f"{name} [{strategy}] (re-run for the violations' events)"),
                        full=full(result))
        return outcome
    tracer = None
    # A log alone records only what it keeps; the timeline (and explain) need every event.
    filtered = not timeline and any(filters.values())
    if log or timeline:
        from tdsim.trace import Tracer

        tracer = Tracer(**filters) if filtered else Tracer()
    logger().info("run.start", scenario=scenario.path, seed=scenario.seed)
    result = control.run(scenario, est, name, tracer)
    logger().info("run.done", violations=len(result.violations), **result.perf)
    outcome.results[scenario.data["kvm"]["host_state"]] = result
    outcome.tracer = tracer
    if not result.partial:
        events = None if tracer is None or filtered else tracer.events
        explain(scenario, result, events, control.rerun(est, f"{name} (re-run for the "
                                                            "violations' events)"),
                full=full(result))
    return outcome


def _document(outcomes: list[Outcome], n_scenarios: int) -> dict[str, Any]:
    """One scenario: its document; several: ``{"tdsim_version", "runs": [...]}``, each run
    the document of one scenario plus its ``scenario_path``."""
    if n_scenarios == 1 and outcomes:
        return outcomes[0].document()
    runs = []
    for o in outcomes:
        doc = o.document()
        doc.pop("tdsim_version", None)
        runs.append({"scenario_path": o.scenario.path, **doc})
    partial = len(outcomes) < n_scenarios or any(o.partial for o in outcomes)
    return {**({"partial": True} if partial else {}), "tdsim_version": __version__,
            "runs": runs}


def _write_observability(args: argparse.Namespace, outcome: Outcome,
                         filters: dict[str, Any]) -> IO[str]:
    """Write the --log and --trace files of a traced run; returns where the summary goes
    (stderr when the log goes to stdout)."""
    from tdsim.eventlog import write_event_log
    from tdsim.perfetto import write_trace

    tracer = outcome.tracer
    result = next(iter(outcome.results.values()))
    end_ns = result.metrics["sim.duration_ns"]
    if args.trace is not None:
        n = write_trace(args.trace, outcome.scenario.data, tracer.events, end_ns)
        logger().info("trace.written", file=args.trace, trace_events=n)
    if args.log == "-":
        write_event_log(tracer.events, sys.stdout, console=sys.stdout.isatty(), **filters)
        sys.stdout.flush()
        return sys.stderr
    if args.log is not None:
        with open(args.log, "w", encoding="utf-8") as f:
            n = write_event_log(tracer.events, f, **filters)
        logger().info("log.written", file=args.log, records=n)
    return sys.stdout


def _print(args: argparse.Namespace, outcomes: list[Outcome], doc: dict[str, Any],
           stream: IO[str]) -> None:
    """The summary on `stream` in the chosen --format (nothing with --quiet)."""
    if args.quiet:
        return
    if args.format == "json":
        stream.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return
    if args.format == "csv":
        write_csv(outcomes, stream)
        return
    from tdsim.cli_render import render
    from tdsim.cli_summary import Block, Line, comparison_blocks, summary_blocks

    blocks: list[Block] = []
    for i, o in enumerate(outcomes):
        if i:
            blocks.append(Line(""))
        if o.compared:
            blocks += comparison_blocks(o.scenario, o.results, args.explain)
        else:
            blocks += summary_blocks(next(iter(o.results.values())), o.scenario.path,
                                     args.explain)
    render(blocks, stream)


CSV_COLUMNS = ("scenario", "strategy", "seed", "metric", "value", "unit")


def write_csv(outcomes: list[Outcome], stream: IO[str]) -> None:
    """One row per metric of every run: scenario, strategy, seed, metric, value, unit."""
    from tdsim.metrics import unit

    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for o in outcomes:
        for strategy, r in o.results.items():
            for key, value in r.metrics.items():
                writer.writerow((o.scenario.path, strategy, r.seed, key, value,
                                 unit(key) or ""))
