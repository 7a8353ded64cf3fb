"""What ``tdsim run`` prints for a person, as data: a list of blocks (`Table`, `Line`) that
`tdsim.cli_render` draws as rich tables on a terminal and as plain, never truncated text
otherwise.

Labels and units come from the declared metric table (`tdsim.metrics`); rates say which
clock they use ("per simulated second" for the model's time, "per wall-clock second" for how
fast tdsim ran); shares carry ``%``.  Violations recorded at the same instant on the same CPU
and vCPU by the same invariant (one per MSR, typically) are one numbered row listing every MSR
they concern; the first rows' causes and chains of events (`tdsim.explain`) are printed once
per row, and ``--explain N`` prints row N's in full.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_VIOLATION_ROWS = 20
MAX_EXPLAINED = 3  # violation rows whose cause and chain of events are printed
MAX_CALLS_SHOWN = 40
CPU_STATES = ("guest", "kvm", "vmm", "host_task", "idle")
_MSR = re.compile(r"\b(?:MSR_[A-Z0-9_]+|KERNEL_GS_BASE)\b")


@dataclass
class Table:
    """A titled table of strings; `text` columns are left-aligned, the others right."""

    title: str
    columns: Sequence[str]
    rows: list[list[str]] = field(default_factory=list)
    text: Sequence[str] = ()

    def add(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])


@dataclass
class Line:
    """A line of text; `style` (rich's: "bold", "dim", "red", "green") only on a terminal."""

    text: str
    style: str = ""


Block = Table | Line
Metrics = dict[str, Any]


def num(value: Any) -> str:
    """A number for a person: thousands separators, three significant digits below 100."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


def us_text(us: float) -> str:
    """Microseconds for a person: ``2,000,000`` (not ``2e+06``), ``12.5``."""
    return f"{us:,.0f}" if float(us).is_integer() else f"{us:,}"


def pct(part: float, total: float) -> str:
    return f"{100 * part / total:.1f}%" if total else "-"


def ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def label_unit(key: str) -> tuple[str, str]:
    """The declared label (without its unit) and unit of metric `key`."""
    from tdsim.metrics import label, unit

    u = unit(key) or ""
    return label(key).removesuffix(f" [{u}]"), u


def prefixed(m: Metrics, prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)}


def total_exits(m: Metrics) -> float:
    for key in ("exits", "exits.total"):
        if key in m:
            return float(m[key])
    return float(sum(prefixed(m, "exits.reason.").values()))


def measured_s(result: Any) -> float:
    """Simulated seconds the metrics cover (after the warm-up, up to a stop)."""
    m = result.metrics
    if "sim.measured_ns" in m:
        return float(m["sim.measured_ns"]) / 1e9
    return float(_data(result.scenario)["sim"]["duration_us"]) / 1e6


def _data(scenario: Any) -> dict[str, Any]:
    data: dict[str, Any] = getattr(scenario, "data", scenario)
    return data


def header(path: str, seed: int, data: dict[str, Any], results: Sequence[Any],
           extra: str = "") -> list[Block]:
    """The first line of a summary, and a warning line for a partial result."""
    duration = us_text(data["sim"]["duration_us"])
    out: list[Block] = [Line(f"tdsim {Path(path).name}  seed {seed}  {duration} us "
                             f"simulated{extra}", "bold")]
    for r in results:
        if getattr(r, "partial", False):
            stopped = r.metrics.get("sim.duration_ns", 0) / 1000
            out.append(Line(f"PARTIAL: interrupted at {stopped:,.0f} us of {duration} us; "
                            "the figures cover only that time", "bold red"))
            break
    return out


# --- one run ----------------------------------------------------------------------------------


def summary_blocks(result: Any, path: str | None = None,
                   explain: int | None = None) -> list[Block]:
    """The summary of `result` (a `tdsim.sim.Result`): headline counts, breakdowns by site,
    MSR, TDVMCALL and exit reason, register moves, scripted calls, latencies, CPU time,
    violations (`explain`: the row whose chain is printed whole), and how fast the run went.
    Zero metrics may be absent."""
    m = result.metrics
    data = _data(result.scenario)
    name = path or str(getattr(result.scenario, "path", ""))
    out = header(name, result.seed, data, [result])
    exits = total_exits(m)
    head = Table("", ("metric", "value", "unit", "key"), text=("unit", "key"))
    head.add("TD exits", num(m.get("exits", exits)), "exits", "exits")
    head.add("  per simulated second", num(ratio(exits, measured_s(result))),
             "exits/s", "")
    for key in ("host_state_reload", "wrmsr.total", "userspace_exits", "vcpu_put",
                "migrations"):
        text, unit = label_unit(key)
        head.add(text, num(m.get(key, 0)), unit, key)
    for path_name, value in prefixed(m, "late_abort.").items():
        head.add(f"late entry aborts: {path_name}", num(value), "aborts",
                 f"late_abort.{path_name}")
    # a KVM_BUG_ON is never a detail: the VM died (and dmesg would show the warnings)
    for prefix, text, unit in (("kvm_bug.", "KVM_BUG_ON (VM dead)", "hits"),
                               ("kernel_warn.", "kernel warnings (dmesg)", "warnings")):
        for function, value in prefixed(m, prefix).items():
            head.add(f"{text}: {function}", num(value), unit, f"{prefix}{function}")
    out.append(head)
    from tdsim.schema import TDVMCALL_KINDS

    for title, prefix, column, order in (
            ("WRMSRs by site", "wrmsr.site.", "site", ()),
            ("WRMSRs by MSR", "wrmsr.msr.", "MSR", ()),
            ("TDVMCALLs by kind", "tdvmcall.", "kind", TDVMCALL_KINDS),
            ("TD exits by reason", "exits.reason.", "reason", ())):
        counts = prefixed(m, prefix)
        if not counts:
            continue
        total = sum(counts.values())
        unit = label_unit(prefix + next(iter(counts)))[1]
        table = Table(title, (column, unit, "share"), text=(column,))
        keys = (sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
                if order else sorted(counts, key=lambda k: (-counts[k], k)))
        for key in keys:
            table.add(key, num(counts[key]), pct(counts[key], total))
        out.append(table)
    out += _regs(m, data) + _calls(getattr(result, "details", {}).get("calls", {}))
    out += _latencies(m) + _cpu_split(m) + violation_blocks(result.violations, explain)
    perf = result.perf
    if perf:
        out.append(Line(_perf_text(perf), "dim"))
    return out


def _perf_text(perf: dict[str, Any]) -> str:
    parts = [f"wall clock: {perf.get('wall_s', 0):.3g} s"]
    if perf.get("sim_events") is not None:
        per = perf.get("events_per_td_exit")
        parts.append(f"{num(perf['sim_events'])} SimPy events"
                     + (f" ({per:.3g} per TD exit)" if per else ""))
    if perf.get("td_exits_per_s"):
        parts.append(f"{num(perf['td_exits_per_s'])} TD exits per wall-clock second")
    if perf.get("compiled"):
        parts.append("compiled build")
    return ", ".join(parts)


def _regs(m: Metrics, data: dict[str, Any]) -> list[Block]:
    """GPR copies between vp_enter_args and regs[] (per TD exit) for the run's layout."""
    exits = total_exits(m)
    if not exits or "regs_layout" not in data.get("kvm", {}):
        return []
    table = Table(f"GPR moves ({data['kvm']['regs_layout']} layout)",
                  ("metric", "total", "per TD exit", "unit"), text=("unit",))
    for key, text in (("regs.copies", "GPR copies"), ("regs.bytes", "bytes moved")):
        table.add(text, num(m.get(key, 0)), f"{m.get(key, 0) / exits:.2f}",
                  label_unit(key)[1])
    return [table]


def _hex(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) else str(value)


def _exit_text(e: dict[str, Any]) -> str:
    name = str(e.get("exit_reason", "?")).removeprefix("KVM_EXIT_")
    fields = next((v for v in e.values() if isinstance(v, dict)), {})

    def value(v: Any) -> str:
        if isinstance(v, list):
            return "[" + ",".join(map(_hex, v[:4])) + (",...]" if len(v) > 4 else "]")
        return _hex(v)

    shown = " ".join(f"{k}={value(v)}" for k, v in fields.items() if k != "flags")
    return f"{name} {shown}".strip()


def _calls(calls: dict[str, list[dict[str, Any]]]) -> list[Block]:
    """Scripted guests' calls: when, which, what KVM did, what the guest got back."""
    out: list[Block] = []
    for vcpu, records in calls.items():
        table = Table(f"Calls of {vcpu} (scripted guest): {len(records)} recorded",
                      ("time (ns)", "step", "call", "KVM", "R10 / status", "R11", "R12..R15"),
                      text=("call", "KVM", "R10 / status"))
        for rec in records[:MAX_CALLS_SHOWN]:
            regs = rec.get("regs_out", {})
            if rec.get("rax"):
                kvm = f"TDCALL failed, RAX={rec['rax']:#x}"
            elif rec.get("exits"):
                kvm = "; ".join(_exit_text(e) for e in rec["exits"][:3])
                if len(rec["exits"]) > 3:
                    kvm += f"; ... ({len(rec['exits'])} exits)"
            else:
                kvm = "in kernel"
            status = rec.get("status") or (_hex(regs["r10"]) if regs else "(no return)")
            if rec.get("op") == "vp_enter":  # a scripted TDH.VP.ENTER outcome
                status = f"vp_enter_ret={rec['vp_enter_ret']:#x}"
            table.add(num(rec["t_ns"]), rec["step"], f"{rec['name']} ({rec.get('leaf')})", kvm,
                      status, _hex(regs.get("r11")),
                      " ".join(_hex(regs.get(r)) for r in ("r12", "r13", "r14", "r15")))
        out.append(table)
        if len(records) > MAX_CALLS_SHOWN:
            out.append(Line(f"... {len(records) - MAX_CALLS_SHOWN} more calls in the JSON "
                            f"result (\"calls\")", "dim"))
    return out


def _latencies(m: Metrics) -> list[Block]:
    """One row per latency family (irq.latency_ns.<source>, wake-up, shootdown)."""
    table = Table("Delivery latency (ns)", ("source", "p50", "p90", "p99", "max", "count"))
    named = {"halt.wakeup_latency_ns": "wake-up (scheduling)",
             "ipi.shootdown_ns": "shootdown (to last ack)"}
    for key in sorted(k for k in m if k.endswith(".count")):
        base = key[:-len(".count")]
        if base.startswith("irq.latency_ns."):
            text = base[len("irq.latency_ns."):]
        elif base in named:
            text = named[base]
        else:
            continue
        table.add(text, *(num(m.get(f"{base}.{p}", 0)) for p in ("p50", "p90", "p99", "max")),
                  num(m[key]))
    return [table] if table.rows else []


def _cpu_split(m: Metrics) -> list[Block]:
    split: dict[int, dict[str, float]] = {}
    for key, value in m.items():
        match = re.fullmatch(r"cpu\.(\d+)\.ns\.(\w+)", key)
        if match:
            split.setdefault(int(match[1]), {})[match[2]] = value
    if not split:
        return []
    extra = sorted({s for per in split.values() for s in per} - set(CPU_STATES))
    states = CPU_STATES + tuple(extra)
    table = Table("CPU time by category (share of measured time)", ("cpu", *states))
    for cpu in sorted(split):
        total = sum(split[cpu].values())
        table.add(cpu, *(pct(split[cpu].get(s, 0), total) for s in states))
    return [table]


# --- violations -------------------------------------------------------------------------------


def group_violations(violations: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Violations of one invariant at one instant, CPU and vCPU (one record per MSR) as one
    group, in the order of their first record."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for v in violations:
        key = (v.get("t_ns"), v.get("cpu"), v.get("vcpu"), v.get("invariant"))
        groups.setdefault(key, []).append(v)
    return list(groups.values())


def _joined_detail(details: list[str]) -> str:
    """``after vcpu_put: A; B`` for ``["after vcpu_put: A", "after vcpu_put: B"]``."""
    unique = list(dict.fromkeys(details))
    if len(unique) == 1:
        return unique[0]
    head = unique[0].rpartition(": ")[0]
    if head and all(d.startswith(head + ": ") for d in unique):
        return head + ": " + "; ".join(d[len(head) + 2:] for d in unique)
    return "; ".join(unique)


def violation_blocks(violations: list[dict[str, Any]],
                     explain: int | None = None) -> list[Block]:
    """One numbered row per violation group with every MSR it concerns; then, for the first
    groups (and group `explain`), the cause and the chain of events from the cause to the
    detection (`tdsim.explain.explanation`), once per group."""
    from tdsim.explain import explanation

    if not violations:
        return [Line("no invariant violations", "green")]
    groups = group_violations(violations)
    table = Table(f"Invariant violations: {len(violations)} recorded",
                  ("#", "time (ns)", "cpu", "vCPU / task", "invariant", "MSRs", "detail"),
                  text=("vCPU / task", "invariant", "MSRs", "detail"))
    for n, group in enumerate(groups[:MAX_VIOLATION_ROWS], 1):
        first = group[0]
        details = [str(v.get("detail")) for v in group]
        msrs = list(dict.fromkeys(m for d in details for m in _MSR.findall(d)))
        table.add(n, num(first.get("t_ns")), first.get("cpu"), first.get("vcpu"),
                  first.get("invariant"), ", ".join(msrs) or "-", _joined_detail(details))
    out: list[Block] = [table]
    if len(groups) > MAX_VIOLATION_ROWS:
        out.append(Line(f"... and {len(groups) - MAX_VIOLATION_ROWS} more rows "
                        f"({len(violations)} violations in all; every one is in the JSON "
                        "result)", "red"))
    shown = [n for n, g in enumerate(groups, 1) if g[0].get("events")]
    shown = shown[:MAX_EXPLAINED] + ([explain] if explain in shown[MAX_EXPLAINED:] else [])
    for n in shown:
        first = groups[n - 1][0]
        out.append(Line(f"violation {n} ({first['invariant']} at {num(first['t_ns'])} ns, "
                        f"cpu {first['cpu']}, {first['vcpu']}): its cause, then the events "
                        "from the cause to the detection"
                        + (" (all of them)" if n == explain else ""), "bold"))
        out += [Line(line) for line in explanation(first)]
    if explain is not None and explain > len(groups):
        out.append(Line(f"--explain {explain}: there are {len(groups)} violation rows", "red"))
    return out


# --- a strategy comparison --------------------------------------------------------------------


def comparison_blocks(scenario: Any, results: dict[str, Any],
                      explain: int | None = None) -> list[Block]:
    """Side by side, one column per strategy: host-state work per TD exit and per simulated
    second, violations per oracle, late aborts per path; then each strategy's violations."""
    data = _data(scenario)
    out = header(str(scenario.path), scenario.seed, data, list(results.values()),
                 f", {len(results)} strategies (paired: same seed)")
    ms = {s: r.metrics for s, r in results.items()}
    seconds = {s: measured_s(r) for s, r in results.items()}

    def union(prefix: str) -> list[str]:
        return sorted({k for m in ms.values() for k in prefixed(m, prefix)})

    Row = tuple[str, str, Callable[[str, Metrics], Any]]
    rows: list[Row] = [
        ("TD exits", "exits", lambda s, m: total_exits(m)),
        ("exits to userspace", "exits", lambda s, m: m.get("userspace_exits", 0)),
        ("host-state reloads", "reloads", lambda s, m: m.get("host_state_reload", 0)),
        ("WRMSRs", "WRMSRs", lambda s, m: m.get("wrmsr.total", 0)),
        *((f"  at {site}", "WRMSRs", (lambda s, m, k=site: m.get(f"wrmsr.site.{k}", 0)))
          for site in union("wrmsr.site.")),
        ("WRMSRs per TD exit", "WRMSRs/exit",
         lambda s, m: ratio(m.get("wrmsr.total", 0), total_exits(m))),
        ("WRMSRs per simulated second", "WRMSRs/s",
         lambda s, m: ratio(m.get("wrmsr.total", 0), seconds[s])),
        ("time in WRMSR", "us", lambda s, m: m.get("wrmsr.ns", 0) / 1000),
        ("violations", "violations", lambda s, m: sum(prefixed(m, "violations.").values())),
        *((f"  {k}", "violations", (lambda s, m, k=k: m.get(f"violations.{k}", 0)))
          for k in union("violations.")),
        ("late entry aborts", "aborts", lambda s, m: m.get("late_abort", 0)),
        *((f"  {k}", "aborts", (lambda s, m, k=k: m.get(f"late_abort.{k}", 0)))
          for k in union("late_abort.")),
        *((f"KVM_BUG_ON (VM dead): {k}", "hits", (lambda s, m, k=k: m.get(f"kvm_bug.{k}", 0)))
          for k in union("kvm_bug.")),
    ]
    table = Table("Host-state work by strategy", ("metric", "unit", *results), text=("unit",))
    for text, unit, get in rows:
        table.add(text, unit, *(num(get(s, m)) for s, m in ms.items()))
    out.append(table)
    for strategy, r in results.items():
        if r.violations:
            out.append(Line(f"{strategy}:", "red"))
            out += violation_blocks(r.violations, explain)
    return out
