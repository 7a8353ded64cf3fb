"""The ``tdsim`` command line: ``run``, ``validate`` and ``schema``.

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
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise ScenarioError(args.json, "--json", "directory does not exist")
    sim = importlib.import_module("tdsim.sim")
    if scenario.data["kvm"]["compare"]:
        return _run_compare(sim, scenario, args)
    log.info("run.start", scenario=scenario.path, seed=scenario.seed)
    result = sim.run(scenario)
    log.info("run.done", violations=len(result.violations), **result.perf)
    if args.json is not None:
        text = json.dumps(result.to_dict(), indent=1, sort_keys=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print_summary(result)
    return 1 if result.violations else 0


def _run_compare(sim: Any, scenario: Any, args: argparse.Namespace) -> int:
    """Run `scenario` once per strategy in kvm.compare (same seed: common random numbers)."""
    results = {}
    for strategy in scenario.data["kvm"]["compare"]:
        variant = scenario.replace({"kvm.host_state": strategy, "kvm.compare": []})
        results[strategy] = sim.run(variant)
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
