"""The ``tdsim`` command line: ``run``, ``check``, ``validate`` and ``schema``.

Exit status: 0 ok; 1 the run recorded invariant violations (results are still printed and
written); 2 bad input (one line on stderr, ``tdsim: error: <file>: <key path>: <message>``,
and nothing is run).

To add a subcommand, write a function ``cmd_<name>(args) -> int`` whose docstring's first line
is its help, and decorate it with ``@subcommand(arg(...), ...)`` listing its arguments the way
`argparse.ArgumentParser.add_argument` takes them.  Import the model inside the function, so
``tdsim validate`` and ``tdsim schema`` never load it.

structlog is configured here, once per process, from ``--log-level`` (never at import time).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from tdsim._version import __version__
from tdsim.scenario import ScenarioError, describe_schema, load_scenario

log = structlog.get_logger("tdsim.cli")

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MAX_VIOLATIONS_SHOWN = 20
MAX_EXPLAINED = 3  # violations whose leading events the summary prints
CPU_STATES = ("guest", "kvm", "vmm", "host_task", "idle")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Handler, tuple[tuple[tuple[str, ...], dict[str, Any]], ...]]] = {}


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One argument of a subcommand, spelt as for `argparse.ArgumentParser.add_argument`."""
    return flags, kwargs


def subcommand(*args: tuple[tuple[str, ...], dict[str, Any]]) -> Callable[[Handler], Handler]:
    """Register ``cmd_<name>`` as the subcommand ``<name>`` (underscores become dashes)."""

    def register(func: Handler) -> Handler:
        name = func.__name__.removeprefix("cmd_").replace("_", "-")
        _COMMANDS[name] = (func, args)
        return func

    return register


def configure_logging(level: str) -> None:
    """Configure structlog for this process: key-value lines on stderr at `level` and above."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tdsim", description="Event-driven simulator of Intel TDX guests under Linux KVM.")
    parser.add_argument("--version", action="version", version=f"tdsim {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                        help="log threshold (default: warning)")
    # Also accepted after the subcommand; SUPPRESS keeps the main parser's value when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="log threshold (default: warning)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, args) in _COMMANDS.items():
        doc = (func.__doc__ or "").strip()
        p = sub.add_parser(name, parents=[common], help=doc.splitlines()[0] if doc else None,
                           description=doc or None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in args:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tdsim`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return args.func(args)
    except ScenarioError as e:
        print(f"tdsim: error: {e}", file=sys.stderr)
        return 2


_SET = arg("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
           help="override a scenario key (dotted, e.g. vm.0.vcpus=4; vm.N one past the end "
                "adds a VM); VALUE is a TOML literal, else a string; repeatable")


# --- subcommands ------------------------------------------------------------------------------


@subcommand(
    arg("scenario", help="scenario TOML file"),
    arg("--seed", type=int, help="run seed (overrides sim.seed)"),
    _SET,
    arg("--json", metavar="FILE", help="write the result document (JSON) to FILE"),
    arg("--compare", metavar="S1,S2,...",
        help="run once per host-state strategy (same seed) and compare them side by side "
             "(overrides kvm.compare)"),
    arg("--log", metavar="FILE",
        help="write the structured event log: JSON lines, one per modelled event; '-' = "
             "stdout (a readable console form on a terminal; the summary then goes to stderr)"),
    arg("--log-kind", action="append", metavar="KIND[,KIND]",
        help="log only these event kinds (repeatable)"),
    arg("--log-cpu", action="append", metavar="N[,N]", help="log only these host CPUs"),
    arg("--log-vcpu", action="append", metavar="NAME[,NAME]",
        help="log only these vCPUs or tasks (td0.vcpu1, task0)"),
    arg("--trace", metavar="FILE.json",
        help="write a Chrome trace-event / Perfetto timeline (open in ui.perfetto.dev)"),
)
def cmd_run(args: argparse.Namespace) -> int:
    """Run one scenario and print a summary of its metrics and violations."""
    overrides = list(args.overrides or [])
    if args.seed is not None:
        overrides.append(f"sim.seed={args.seed}")
    if args.compare is not None:
        strategies = [s for s in args.compare.split(",") if s]
        overrides.append("kvm.compare=[" + ",".join(json.dumps(s) for s in strategies) + "]")
    scenario = load_scenario(args.scenario, overrides)
    for flag in ("json", "log", "trace"):
        target = getattr(args, flag)
        if target not in (None, "-") and not Path(target).resolve().parent.is_dir():
            raise ScenarioError(target, f"--{flag}", "directory does not exist")
    filters = _log_filters(args)
    sim = importlib.import_module("tdsim.sim")
    explain = importlib.import_module("tdsim.explain")
    if scenario.data["kvm"]["compare"]:
        if args.log is not None or args.trace is not None:
            raise ScenarioError(args.scenario, "--log/--trace",
                                "not available with a strategy comparison (kvm.compare)")
        return _run_compare(sim, scenario, args)
    tracer = None
    # A log alone records only what it keeps; the timeline (and explain) need every event.
    filtered = args.trace is None and any(filters.values())
    if args.log is not None or args.trace is not None:
        from tdsim.trace import Tracer

        tracer = Tracer(**filters) if filtered else Tracer()
    log.info("run.start", scenario=scenario.path, seed=scenario.seed)
    result = sim.run(scenario) if tracer is None else sim.run(scenario, tracer=tracer)
    log.info("run.done", violations=len(result.violations), **result.perf)
    full = tracer.events if tracer is not None and not filtered else None
    explain.explain(scenario, result, full, sim.run)
    if args.json is not None:
        text = json.dumps(result.to_dict(), indent=1, sort_keys=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    console = None
    if tracer is not None:
        console = _write_observability(args, scenario, result, tracer, filters)
    print_summary(result, console)
    return 1 if result.violations else 0


def _split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _log_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The --log-kind/--log-cpu/--log-vcpu filters, checked (bad input is exit status 2)."""
    from tdsim.trace import EVENT_KINDS

    kinds = _split_list(args.log_kind)
    unknown = sorted(set(kinds) - EVENT_KINDS.keys())
    if unknown:
        raise ScenarioError(args.scenario, "--log-kind", f"unknown event kind(s) "
                            f"{', '.join(unknown)} (known: {', '.join(EVENT_KINDS)})")
    cpus = _split_list(args.log_cpu)
    if not all(c.isdigit() for c in cpus):
        raise ScenarioError(args.scenario, "--log-cpu", f"expected CPU numbers, got {cpus}")
    return {"kinds": kinds, "cpus": [int(c) for c in cpus], "vcpus": _split_list(args.log_vcpu)}


def _write_observability(args: argparse.Namespace, scenario: Any, result: Any, tracer: Any,
                         filters: dict[str, Any]) -> Any:
    """Write the --log and --trace files of a traced run; returns the console for the
    summary (stderr when the log goes to stdout)."""
    from rich.console import Console

    from tdsim.eventlog import write_event_log
    from tdsim.perfetto import write_trace

    console = None
    end_ns = result.metrics["sim.duration_ns"]
    if args.trace is not None:
        n = write_trace(args.trace, scenario.data, tracer.events, end_ns)
        log.info("trace.written", file=args.trace, trace_events=n)
    if args.log == "-":
        console = Console(stderr=True)
        write_event_log(tracer.events, sys.stdout, console=sys.stdout.isatty(), **filters)
    elif args.log is not None:
        with open(args.log, "w", encoding="utf-8") as f:
            n = write_event_log(tracer.events, f, **filters)
        log.info("log.written", file=args.log, records=n)
    return console


def _run_compare(sim: Any, scenario: Any, args: argparse.Namespace) -> int:
    """Run `scenario` once per strategy in kvm.compare (same seed: common random numbers)."""
    results = {}
    for strategy in scenario.data["kvm"]["compare"]:
        variant = scenario.replace({"kvm.host_state": strategy, "kvm.compare": []})
        results[strategy] = sim.run(variant)
        importlib.import_module("tdsim.explain").explain(variant, results[strategy],
                                                         rerun=sim.run)
    if args.json is not None:
        doc = {"tdsim_version": __version__,
               "comparison": {s: r.to_dict() for s, r in results.items()}}
        Path(args.json).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n",
                                   encoding="utf-8")
    print_comparison(scenario, results)
    return 1 if any(r.violations for r in results.values()) else 0


@subcommand(arg("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files"), _SET)
def cmd_validate(args: argparse.Namespace) -> int:
    """Check scenario files against the schema without running them."""
    status = 0
    for path in args.scenarios:
        try:
            load_scenario(path, args.overrides)
        except ScenarioError as e:
            print(f"tdsim: error: {e}", file=sys.stderr)
            status = 2
        else:
            print(f"ok {path}")
    return status


@subcommand(
    arg("scenarios", nargs="+", metavar="SCENARIO", help="scenario TOML files"),
    _SET,
    arg("--update-fingerprints", action="store_true",
        help="store this run's trajectory fingerprint beside each scenario instead of "
             "comparing with it"),
)
def cmd_check(args: argparse.Namespace) -> int:
    """Run scenarios as regression tests: their [expect] tables and stored fingerprints.

Prints one line per scenario and, for a failure, what differs (a broken expectation, or the
first event where the trajectory leaves the stored fingerprint).  With --set, fingerprints
are not compared (they belong to the scenario as written).  Exit status 1 if any fails."""
    from tdsim.expect import check_scenario

    scenarios = [load_scenario(path, args.overrides) for path in args.scenarios]
    status = 0
    for scenario in scenarios:
        report = check_scenario(scenario, update_fingerprints=args.update_fingerprints,
                                fingerprints=not args.overrides)
        print(report.render())
        if not report.ok:
            status = 1
    return status


@subcommand()
def cmd_schema(args: argparse.Namespace) -> int:
    """Print the scenario reference (every key, its default and meaning) as Markdown."""
    sys.stdout.write(describe_schema())
    return 0


# Statistical studies (tdsim/study): registered from their own module.
from tdsim.study.cli import STUDY_ARGS, cmd_study  # noqa: E402

subcommand(*STUDY_ARGS)(cmd_study)


# --- the run summary --------------------------------------------------------------------------


def print_summary(result: Any, console: Any = None) -> None:
    """Print `result` (a `tdsim.sim.Result`) for a person: headline counts, WRMSR, TDVMCALL
    and exit-reason breakdowns, per-CPU time split, and violations.  Metrics that are zero
    may be absent from ``result.metrics``."""
    from rich.console import Console

    console = console or Console()
    m = result.metrics
    data = getattr(result.scenario, "data", result.scenario)
    duration_s = data["sim"]["duration_us"] / 1e6

    exits = _total_exits(m)
    head = _table("", ("metric", "value"))
    head.add_row("TD exits", _num(exits))
    head.add_row("TD exits / s (simulated)", _num(exits / duration_s if duration_s else 0.0))
    for key, label in (("host_state_reload", "host_state_reload"),
                       ("wrmsr.total", "WRMSRs"),
                       ("userspace_exits", "userspace exits"),
                       ("vcpu_put", "vcpu_put"),
                       ("migrations", "vCPU migrations")):
        head.add_row(label, _num(m.get(key, 0)))
    for key, value in _prefixed(m, "late_abort.").items():
        head.add_row(f"late abort: {key}", _num(value))
    name = Path(str(getattr(result.scenario, "path", ""))).name
    console.print(f"[bold]tdsim[/bold] {name}  seed {result.seed}  "
                  f"{data['sim']['duration_us']:g} us simulated")
    console.print(head)

    for title, prefix, order in (("WRMSRs by site", "wrmsr.site.", None),
                                 ("WRMSRs by MSR", "wrmsr.msr.", None),
                                 ("TDVMCALLs by kind", "tdvmcall.", _tdvmcall_order()),
                                 ("TD exits by reason", "exits.reason.", None)):
        counts = _prefixed(m, prefix)
        if not counts:
            continue
        total = sum(counts.values())
        table = _table(title, (title.split(" by ")[-1], "count", "share"))
        keys = (sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
                if order else sorted(counts, key=lambda k: (-counts[k], k)))
        for key in keys:
            table.add_row(key, _num(counts[key]), _pct(counts[key], total))
        console.print(table)

    _print_regs(console, m, data)  # issue 5
    _print_calls(console, getattr(result, "details", {}).get("calls", {}))  # issue 5
    _print_latencies(console, m)  # issue 4
    _print_cpu_split(console, m)
    _print_violations(console, result.violations)
    perf = result.perf
    if perf:
        console.print("[dim]" + ", ".join(f"{k} {_num(v)}" for k, v in perf.items()) + "[/dim]")


def print_comparison(scenario: Any, results: dict[str, Any], console: Any = None) -> None:
    """Side by side, one column per strategy: host-state work per TD exit and per second."""
    from rich.console import Console

    console = console or Console()
    duration_s = scenario.data["sim"]["duration_us"] / 1e6
    name = Path(str(scenario.path)).name
    console.print(f"[bold]tdsim[/bold] {name}  seed {scenario.seed}  "
                  f"{scenario.data['sim']['duration_us']:g} us simulated, "
                  f"{len(results)} strategies (paired: same seed)")
    table = _table("Host-state work by strategy", ("metric", *results))
    ms = {s: r.metrics for s, r in results.items()}
    sites = sorted({k for m in ms.values() for k in _prefixed(m, "wrmsr.site.")})
    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("TD exits", lambda m: _total_exits(m)),
        ("userspace exits", lambda m: m.get("userspace_exits", 0)),
        ("host_state_reload", lambda m: m.get("host_state_reload", 0)),
        ("WRMSRs", lambda m: m.get("wrmsr.total", 0)),
        *((f"  WRMSRs at {site}", (lambda m, s=site: m.get(f"wrmsr.site.{s}", 0)))
          for site in sites),
        ("WRMSRs per TD exit", lambda m: _ratio(m.get("wrmsr.total", 0), _total_exits(m))),
        ("WRMSRs per s (simulated)", lambda m: m.get("wrmsr.total", 0) / duration_s),
        ("time in WRMSR (us)", lambda m: m.get("wrmsr.ns", 0) / 1000),
        ("violations", lambda m: sum(_prefixed(m, "violations.").values())),
        # issue 3: violations per oracle, and late entry aborts by kind
        *((f"  {k}", (lambda m, k=k: m.get(f"violations.{k}", 0))) for k in sorted(
            {k for m in ms.values() for k in _prefixed(m, "violations.")})),
        ("late aborts", lambda m: m.get("late_abort", 0)),
        *((f"  {k}", (lambda m, k=k: m.get(f"late_abort.{k}", 0))) for k in sorted(
            {k for m in ms.values() for k in _prefixed(m, "late_abort.")})),
    ]
    for label, get in rows:
        table.add_row(label, *(_num(get(m)) for m in ms.values()))
    console.print(table)
    for strategy, r in results.items():
        if r.violations:
            console.print(f"[red]{strategy}:[/red]")
            _print_violations(console, r.violations)


# --- issue 5: register marshalling and scripted guests' calls ---------------------------------
MAX_CALLS_SHOWN = 40


def _print_regs(console: Any, m: dict[str, Any], data: dict[str, Any]) -> None:
    """GPR copies between vp_enter_args and regs[] (per TD exit) for the run's layout."""
    exits = _total_exits(m)
    if not exits or "regs_layout" not in data.get("kvm", {}):
        return
    table = _table(f"GPR moves ({data['kvm']['regs_layout']} layout)",
                   ("metric", "total", "per TD exit"))
    for key, label in (("regs.copies", "GPR copies"), ("regs.bytes", "bytes moved")):
        table.add_row(label, _num(m.get(key, 0)), f"{m.get(key, 0) / exits:.2f}")
    console.print(table)


def _hex(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) else str(value)


def _exit_text(e: dict[str, Any]) -> str:
    name = str(e.get("exit_reason", "?")).removeprefix("KVM_EXIT_")
    fields = next((v for k, v in e.items() if isinstance(v, dict)), {})
    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ",".join(map(_hex, v[:4])) + (",...]" if len(v) > 4 else "]")
        return _hex(v)

    shown = " ".join(f"{k}={value(v)}" for k, v in fields.items() if k != "flags")
    return f"{name} {shown}".strip()


def _print_calls(console: Any, calls: dict[str, list[dict[str, Any]]]) -> None:
    """Scripted guests' calls: when, which, what KVM did, what the guest got back."""
    for vcpu, records in calls.items():
        table = _table(f"Calls of {vcpu} (scripted guest): {len(records)} recorded",
                       ("t_ns", "step", "call", "KVM", "R10 / status", "R11", "R12..R15"),
                       text=("call", "KVM", "R10 / status"))
        for rec in records[:MAX_CALLS_SHOWN]:
            out = rec.get("regs_out", {})
            if rec.get("rax"):
                kvm = f"TDCALL failed, RAX={rec['rax']:#x}"
            elif rec.get("exits"):
                kvm = "; ".join(_exit_text(e) for e in rec["exits"][:3])
                if len(rec["exits"]) > 3:
                    kvm += f"; ... ({len(rec['exits'])} exits)"
            else:
                kvm = "in kernel"
            status = rec.get("status") or (_hex(out["r10"]) if out else "(no return)")
            table.add_row(_num(rec["t_ns"]), str(rec["step"]),
                          f"{rec['name']} ({rec['leaf']})", kvm, status,
                          _hex(out.get("r11")),
                          " ".join(_hex(out.get(r)) for r in ("r12", "r13", "r14", "r15")))
        console.print(table)
        if len(records) > MAX_CALLS_SHOWN:
            console.print(f"[dim]... {len(records) - MAX_CALLS_SHOWN} more calls in the JSON "
                          f"result (\"calls\")[/dim]")


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _print_cpu_split(console: Any, m: dict[str, Any]) -> None:
    split: dict[int, dict[str, float]] = {}
    for key, value in m.items():
        match = re.fullmatch(r"cpu\.(\d+)\.ns\.(\w+)", key)
        if match:
            split.setdefault(int(match[1]), {})[match[2]] = value
    if not split:
        return
    extra = sorted({s for per in split.values() for s in per} - set(CPU_STATES))
    states = CPU_STATES + tuple(extra)
    table = _table("CPU time (%)", ("cpu",) + states)
    for cpu in sorted(split):
        total = sum(split[cpu].values())
        table.add_row(str(cpu), *(_pct(split[cpu].get(s, 0), total) for s in states))
    console.print(table)


def _print_latencies(console: Any, m: dict[str, Any]) -> None:
    """issue 4: one row per latency family (irq.latency_ns.<source>, NMI included; wake-up;
    shootdown) with its percentiles."""
    rows = []
    for key in sorted(k for k in m if k.endswith(".count")):
        base = key[:-len(".count")]
        if base.startswith("irq.latency_ns."):
            label = base[len("irq.latency_ns."):]
        elif base in ("halt.wakeup_latency_ns", "ipi.shootdown_ns"):
            label = {"halt.wakeup_latency_ns": "wake-up (scheduling)",
                     "ipi.shootdown_ns": "shootdown (to last ack)"}[base]
        else:
            continue
        rows.append((label, *(m.get(f"{base}.{p}", 0) for p in ("p50", "p90", "p99", "max")),
                     m[key]))
    if not rows:
        return
    table = _table("Delivery latency (ns)", ("source", "p50", "p90", "p99", "max", "count"))
    for label, *values in rows:
        table.add_row(label, *(_num(v) for v in values))
    console.print(table)


def _print_violations(console: Any, violations: list[dict[str, Any]]) -> None:
    if not violations:
        console.print("[green]no invariant violations[/green]")
        return
    table = _table(f"Invariant violations: {len(violations)}",
                   ("t_ns", "cpu", "vcpu", "invariant", "detail"),
                   text=("vcpu", "invariant", "detail"))
    for v in violations[:MAX_VIOLATIONS_SHOWN]:
        table.add_row(_num(v.get("t_ns")), str(v.get("cpu")), str(v.get("vcpu")),
                      str(v.get("invariant")), str(v.get("detail")))
    console.print(table)
    for i, v in enumerate(v for v in violations[:MAX_EXPLAINED] if v.get("events")):
        console.print(f"[bold]events leading to violation {i + 1}[/bold] "
                      f"({v['invariant']} at {_num(v['t_ns'])} ns, cpu {v['cpu']}):",
                      highlight=False)
        for line in v["events"]:
            console.print("  " + line, highlight=False, markup=False)
    if len(violations) > MAX_VIOLATIONS_SHOWN:
        console.print(f"[red]... and {len(violations) - MAX_VIOLATIONS_SHOWN} more "
                      f"({len(violations)} in all)[/red]")


def _table(title: str, columns: Sequence[str], text: Sequence[str] = ()) -> Any:
    """A rich table: the first column and those in `text` left-aligned, numbers right."""
    from rich.table import Table

    table = Table(title=title or None, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 or col in text else "right")
    return table


def _total_exits(m: dict[str, Any]) -> float:
    for key in ("exits", "exits.total"):
        if key in m:
            return m[key]
    return sum(_prefixed(m, "exits.reason.").values())


def _prefixed(m: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}


def _tdvmcall_order() -> list[str]:
    from tdsim.schema import TDVMCALL_KINDS

    return list(TDVMCALL_KINDS)


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.1f}" if total else "-"
