"""Explaining violations: attach to each recorded violation the few events that led to it.

Nothing is kept while the model runs (tracing off costs nothing).  The model is
deterministic, so when a run recorded violations and was not traced in full, `explain`
runs the same scenario again with a `Tracer` and reads the events from that run: for each
violation, the last `CONTEXT_EVENTS` events on the same host CPU (on the same vCPU or task
when no CPU is involved) up to the ``violation`` event itself, as canonical event lines
(`tdsim.expect.event_line`) in ``violation["events"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .expect import event_line
from .trace import Event, Tracer

CONTEXT_EVENTS = 8


def explain(scenario: Any, result: Any, events: list[Event] | None = None,
            rerun: Callable[..., Any] | None = None) -> None:
    """Give each of ``result.violations`` its ``events`` (in place).  `events`: those of a
    full (unfiltered) trace of this very run, if there is one; else the run is repeated
    traced, with `rerun` (default `tdsim.sim.run`)."""
    if not result.violations:
        return
    if events is None:
        if rerun is None:
            from .sim import run
            rerun = run
        tracer = Tracer()
        rerun(scenario, tracer=tracer)
        events = tracer.events
    attach_context(result.violations, events)


def attach_context(violations: list[dict[str, Any]], events: list[Event],
                   n: int = CONTEXT_EVENTS) -> None:
    """Match each violation record to its ``violation`` event and attach the `n` events
    before it on the same CPU (or the same vCPU/task when ``cpu`` is -1)."""
    ordered = sorted(events, key=lambda e: e[0])
    where: dict[tuple[Any, ...], list[int]] = {}
    for i, (t, kind, cpu, vcpu, fields) in enumerate(ordered):
        if kind == "violation":
            key = (t, cpu, vcpu, fields.get("invariant"), fields.get("detail"))
            where.setdefault(key, []).append(i)
    for v in violations:
        vkey = (v.get("t_ns"), v.get("cpu"), v.get("vcpu"), v.get("invariant"),
                v.get("detail"))
        hits = where.get(vkey)
        if not hits:
            v["events"] = []
            continue
        i = hits.pop(0)
        where_cpu: int = v.get("cpu", -1)
        who = v.get("vcpu")
        before = []
        for e in reversed(ordered[:i]):
            if (e[2] == where_cpu if where_cpu >= 0 else e[3] == who) and e[1] != "violation":
                before.append(e)
                if len(before) == n:
                    break
        v["events"] = [event_line(e) for e in reversed(before)] + [event_line(ordered[i])]
