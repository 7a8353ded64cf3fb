"""Explaining violations: for each recorded violation, the event that made the wrong state (its
*cause*) and the chain of events from the cause to the detection.

Nothing is kept while the model runs (tracing off costs nothing).  The model is deterministic,
so when a run recorded violations and was not traced in full, `explain` runs the same scenario
again with a `Tracer` and reads the events from that run.  Each violation record gets:

* ``cause``: ``{"t_ns", "what", "event"}`` -- when it happened, what happened, and the
  canonical line of the traced event (`tdsim.expect.event_line`) when there is one.  The
  model states the cause of most findings when it records them (the vector that was posted,
  the NMI that was injected, the request that was ignored, the TDH.VP.ENTER return that was
  misread).  For the host-state findings it cannot know cheaply, so it is read from the
  trace here: the last event on that CPU that wrote the MSR's hardware value (a WRMSR, the
  TD exit that left the TDX module's value, a context switch's GS base) or KVM's belief of
  it (``uret_cache``: a cache-only update, or a write through the user-return MSRs); of the
  two, the later one made them differ, and ``cause["other"]`` names the earlier one.
* ``events``: the chain, from the cause (or from the earlier of the two writers, for a
  mismatch) to the ``violation`` event itself, as canonical event lines: only the events
  that tell the story -- for a host-state finding, what happened on that CPU to that MSR,
  to KVM's user-return state and to the TD (entries, exits, loads, puts, aborts, context
  switches); for the others, what happened to that vCPU.  A chain longer than `MAX_HEAD` +
  `MAX_TAIL` events keeps its first and last ones (``events_elided`` says how many are left
  out), unless its violation was asked for in full (``tdsim run --explain N``).

`explanation` renders one violation as text, its first line the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from . import arch
from .expect import event_line
from .trace import Event, Tracer

MAX_HEAD, MAX_TAIL = 8, 12  # a longer chain keeps its first and last events

# What tells the story of a vCPU, and of a CPU's host state.
VCPU_STORY = frozenset({
    "kvm_entry", "kvm_exit", "late_abort", "vcpu_load", "vcpu_put", "vcpu_state",
    "userspace_exit", "pi_posted", "pi_delivered", "nmi_injected", "nmi_delivered", "kick",
    "ipi", "exit_request", "tdvmcall", "seamcall"})
# narrower stories, for findings whose chain can be long (detected at the end of the run)
STORIES = {
    "nmi_accounting": frozenset({"nmi_injected", "nmi_delivered", "seamcall", "late_abort"}),
    "lost_interrupt": frozenset({"pi_posted", "pi_delivered", "kvm_entry", "kvm_exit",
                                 "late_abort", "vcpu_state"}),
    "stuck_halt": frozenset({"pi_posted", "pi_delivered", "nmi_injected", "nmi_delivered",
                             "vcpu_state", "kick", "exit_request"}),
}
# the event that is the cause the model states, by finding (looked for at its instant)
CAUSE_KINDS = {
    "entry_with_exit_request": ("exit_request",), "kick_exit_delay": ("exit_request",),
    "zap_stuck": ("exit_request",), "nmi_accounting": ("nmi_injected",),
    "lost_interrupt": ("pi_posted",), "stuck_halt": ("pi_posted", "nmi_injected"),
    "td_entry_during_zap": ("kvm_entry",),
}
_EXIT_CAUSE = ("kvm_exit",)  # the TDH.VP.ENTER return behind an exit-handling finding
MSR_STORY = frozenset({
    "wrmsr", "uret_cache", "uret_notifier", "kvm_entry", "kvm_exit", "vcpu_load", "vcpu_put",
    "late_abort", "sched_switch", "userspace_exit"})
SCHED_STORY = frozenset({"sched_switch", "vcpu_state"})
# findings about KVM's belief against the hardware (the others compare the hardware with
# what it should hold)
BELIEF = frozenset({"uret_cache_mismatch", "guest_msr_corruption"})
_MODULE_MSRS = {arch.MSR_NAMES[m]: v for m, v in arch.TDX_MODULE_EXIT_MSRS.items()}
_KGS = arch.MSR_NAMES[arch.MSR_KERNEL_GS_BASE]


def explain(scenario: Any, result: Any, events: list[Event] | None = None,
            rerun: Callable[..., Any] | None = None, full: Collection[int] = ()) -> None:
    """Give each of ``result.violations`` its ``cause`` and ``events`` (in place).  `events`:
    those of a full (unfiltered) trace of this very run, if there is one; else the run is
    repeated traced, with `rerun` (default `tdsim.sim.run`).  `full`: indexes (0-based) in
    ``result.violations`` whose chains are kept whole."""
    if not result.violations:
        return
    if events is None:
        if rerun is None:
            from .sim import run
            rerun = run
        tracer = Tracer()
        rerun(scenario, tracer=tracer)
        events = tracer.events
    attach_chains(result.violations, events, full)


def attach_chains(violations: list[dict[str, Any]], events: list[Event],
                  full: Collection[int] = ()) -> None:
    """Match each violation record to its ``violation`` event; attach its cause and chain."""
    ordered = sorted(events, key=lambda e: e[0])
    where: dict[tuple[Any, ...], list[int]] = {}
    for i, (t, kind, cpu, vcpu, fields) in enumerate(ordered):
        if kind == "violation":
            key = (t, cpu, vcpu, fields.get("invariant"), fields.get("detail"))
            where.setdefault(key, []).append(i)
    real = real_exits(ordered)
    for n, v in enumerate(violations):
        hits = where.get((v.get("t_ns"), v.get("cpu"), v.get("vcpu"), v.get("invariant"),
                          v.get("detail")))
        if not hits:
            v["events"] = []
            continue
        i = hits.pop(0)
        start, causes = _attach_cause(v, ordered, i, real)
        chain = [event_line(ordered[k]) for k in range(start, i)
                 if k in causes or _tells(v, ordered[k])] + [event_line(ordered[i])]
        v.pop("events_elided", None)
        if n not in full and len(chain) > MAX_HEAD + MAX_TAIL:
            v["events_elided"] = len(chain) - MAX_HEAD - MAX_TAIL
            chain = chain[:MAX_HEAD] + chain[-MAX_TAIL:]
        v["events"] = chain


def real_exits(ordered: list[Event]) -> set[int]:
    """Indexes of the TDH.VP.ENTER returns (their ``seamcall`` events) that ended an
    entered TD -- the vCPU's ``kvm_entry`` came after its previous ``kvm_exit`` --: those
    left the TDX module's values in the host MSRs (a refused entry touched none).  The
    ``seamcall`` event marks the instant: what KVM does after the return (a strategy's
    WRMSRs) is traced before the ``kvm_exit`` event at the same time."""
    entered: dict[str | None, bool] = {}
    returned: dict[str | None, int] = {}
    out = set()
    for k, (_, kind, _, vcpu, fields) in enumerate(ordered):
        if kind == "kvm_entry":
            entered[vcpu] = True
        elif kind == "seamcall" and fields["leaf"] == "TDH_VP_ENTER":
            returned[vcpu] = k
        elif kind == "kvm_exit" and fields["vp_enter_ret"] != "-":
            if entered.get(vcpu) and vcpu in returned:
                out.add(returned[vcpu])
            entered[vcpu] = False
            returned.pop(vcpu, None)
    return out


def _tells(v: dict[str, Any], e: Event) -> bool:
    """Is `e` part of the story of violation `v`?"""
    _, kind, cpu, vcpu, fields = e
    if kind == "seamcall" and fields["leaf"] == "TDH_VP_ENTER":
        return False  # (its kvm_exit says it)
    msr = v.get("msr")
    if msr is not None:
        if kind in ("wrmsr", "uret_cache"):
            return bool(cpu == v["cpu"] and fields["msr"] == msr)
        return cpu == v["cpu"] and kind in MSR_STORY and (kind != "sched_switch" or msr == _KGS)
    if v["invariant"] in ("cpu_runs_one_thing", "vcpu_on_one_cpu"):
        return kind in SCHED_STORY and (cpu == v["cpu"] or vcpu == v["vcpu"])
    return vcpu == v["vcpu"] and kind in STORIES.get(v["invariant"], VCPU_STORY)


def _attach_cause(v: dict[str, Any], ordered: list[Event], i: int,
                  real: set[int]) -> tuple[int, set[int]]:
    """Set ``v["cause"]`` (from the record, or found in the trace); returns where the chain
    starts and the indexes of the cause events (always in the chain)."""
    if v.get("msr") is not None:
        return _msr_cause(v, ordered, i, real)
    cause = v.get("cause")
    if cause is not None:  # stated by the model: the chain starts at its time
        t = cause["t_ns"]
        start = next((k for k in range(i + 1) if ordered[k][0] >= t), i)
        at_t = [k for k in range(start, i) if ordered[k][0] == t and ordered[k][3] == v["vcpu"]]
        for kind in CAUSE_KINDS.get(v["invariant"], _EXIT_CAUSE):
            k = next((k for k in at_t if ordered[k][1] == kind), None)
            if k is not None:
                cause["event"] = event_line(ordered[k])
                return start, {k}
        return start, set()
    k, what = _found_cause(v, ordered, i)
    if k is None:
        v["cause"] = {"t_ns": None, "what": what}
        return i, set()
    v["cause"] = {"t_ns": ordered[k][0], "what": what, "event": event_line(ordered[k])}
    return k, {k}


def _found_cause(v: dict[str, Any], ordered: list[Event], i: int) -> tuple[int | None, str]:
    """The cause of a finding the model records without one, read from the trace."""
    name, cpu, vcpu = v["invariant"], v["cpu"], v["vcpu"]
    for k in range(i - 1, -1, -1):
        _, kind, e_cpu, e_vcpu, fields = ordered[k]
        if name == "tdvmcall_completion" and kind == "kvm_exit" and e_vcpu == vcpu:
            return k, f"the TD exit ({fields['reason']}) whose TDVMCALL was never completed"
        if name == "entry_on_associated_vcpu" and e_vcpu == vcpu and e_cpu != cpu and (
                kind == "kvm_exit"):
            return k, (f"the TD exit on cpu{e_cpu} left the vCPU associated there; no "
                       "TDH.VP.FLUSH since")
        if name == "cpu_runs_one_thing" and kind == "sched_switch" and e_cpu == cpu:
            return k, f"{fields['next']} was put on cpu{cpu} here and was still running"
        if name == "vcpu_on_one_cpu" and kind == "sched_switch" and e_vcpu == vcpu and (
                e_cpu != cpu):
            return k, f"{vcpu} was put on cpu{e_cpu} here and was still running there"
    return None, "not found in the trace"


def _msr_cause(v: dict[str, Any], ordered: list[Event], i: int,
               real: set[int]) -> tuple[int, set[int]]:
    """Host-state findings: the last writers of the MSR's hardware value and of KVM's belief
    of it on that CPU; the later one is the cause (or the hardware writer alone, for a
    finding that compares the hardware with what it should hold)."""
    msr, cpu = v["msr"], v["cpu"]
    hw: tuple[int, str] | None = None
    belief: tuple[int, str] | None = None
    for k in range(i - 1, -1, -1):
        _, kind, e_cpu, _, fields = ordered[k]
        if e_cpu != cpu:
            continue
        if hw is None:
            if kind == "wrmsr" and fields["msr"] == msr:
                hw = (k, f"WRMSR {msr}={fields['value']} (at {fields['site']})")
            elif k in real and msr in _MODULE_MSRS:
                hw = (k, f"the TD exit (TDH.VP.ENTER's return) left {msr}="
                         f"{_MODULE_MSRS[msr]:#x}, the TDX module's value")
            elif kind == "sched_switch" and msr == _KGS:
                hw = (k, f"the context switch to {fields['next']} loaded its GS base into "
                         f"{msr}")
        if belief is None and kind == "uret_cache" and fields["msr"] == msr:
            how = {"set": "written, and believed, by kvm_set_user_return_msr",
                   "update_cache": "believed by KVM's user-return cache without a WRMSR "
                                   "(kvm_user_return_msr_update_cache)",
                   "user_return": "restored by the user-return notifier"}[fields["via"]]
            belief = (k, f"{msr}={fields['value']} {how}")
        if hw is not None and (belief is not None or v["invariant"] not in BELIEF):
            break
    sides = [s for s in (hw, belief) if s is not None]
    if v["invariant"] not in BELIEF:
        sides = sides[:1]
    if not sides:
        v["cause"] = {"t_ns": None, "what": f"no write of {msr} on cpu{cpu} in the trace "
                                            "(it holds its value since the run began)"}
        return i, set()
    sides.sort()
    k, what = sides[-1]
    cause: dict[str, Any] = {"t_ns": ordered[k][0], "what": what,
                             "event": event_line(ordered[k])}
    if len(sides) == 2:
        k0, what0 = sides[0]
        cause["other"] = {"t_ns": ordered[k0][0], "what": what0,
                          "event": event_line(ordered[k0])}
    elif v["invariant"] in BELIEF:
        cause["other"] = {"t_ns": None, "what": "the other side has its value since the "
                                                "run began"}
    v["cause"] = cause
    return sides[0][0], {s[0] for s in sides}


def explanation(v: dict[str, Any]) -> list[str]:
    """Violation `v` (explained) as text: the cause first, then the chain of events."""
    cause = v.get("cause") or {"t_ns": None, "what": "unknown"}
    out = [_cause_line("cause: ", cause)]
    other = cause.get("other")
    if other is not None:
        out.append(_cause_line("  against: ", other))
    events = list(v.get("events", []))
    elided = v.get("events_elided", 0)
    if elided:
        events.insert(MAX_HEAD, f"... {elided} more events ...")
    return out + ["  " + e for e in events]


def _cause_line(head: str, cause: dict[str, Any]) -> str:
    event = cause.get("event")
    if event:
        return f"{head}{event} -- {cause['what']}"
    t = cause.get("t_ns")
    return f"{head}{t} {cause['what']}" if t is not None else f"{head}{cause['what']}"
