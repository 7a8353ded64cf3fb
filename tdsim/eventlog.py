"""The structured event log (``tdsim run --log FILE``): one structlog record per traced event.

Records are rendered by a structlog processor chain of their own (`structlog.wrap_logger`
around the output stream), so the process-wide structlog configuration that the CLI sets up
for diagnostics is left alone.  Each record carries the event kind as ``event``, the simulated
time (``t_ns`` and ``timestamp``, in microseconds), ``cpu``, ``vcpu`` and the kind's fields
(`tdsim.trace.EVENT_KINDS`).  JSON lines by default; the console renderer, one aligned line
per event, when the stream is a terminal.

The log is written after the run from the tracer's events in time order (a few events are
emitted after the fact, e.g. ``cpu_state`` at the end of a segment).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from .trace import Event


def matches(event: Event, kinds: frozenset[str] | None, cpus: frozenset[int] | None,
            vcpus: frozenset[str] | None) -> bool:
    """The filter of `tdsim.trace.Tracer`, applied to an event already recorded."""
    _, kind, cpu, vcpu, _ = event
    return ((kinds is None or kind in kinds) and (cpus is None or cpu in cpus)
            and (vcpus is None or vcpu in vcpus))


def _sim_timestamp(_logger: Any, _name: str, record: MutableMapping[str, Any]
                   ) -> MutableMapping[str, Any]:
    """Processor: ``timestamp`` is the simulated time in microseconds (not the wall clock)."""
    record["timestamp"] = f"{record['t_ns'] / 1000:.3f}us"
    return record


def event_logger(stream: TextIO, console: bool) -> Any:
    """A structlog logger writing to `stream`: console lines if `console`, else JSON lines."""
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
                     if console else structlog.processors.JSONRenderer())
    return structlog.wrap_logger(structlog.WriteLogger(stream),
                                 processors=[_sim_timestamp, renderer],
                                 # not the CLI's level-filtering wrapper: every event is kept
                                 wrapper_class=structlog.BoundLogger,
                                 cache_logger_on_first_use=True)


def write_event_log(events: Iterable[Event], stream: TextIO, console: bool = False,
                    kinds: Iterable[str] | None = None, cpus: Iterable[int] | None = None,
                    vcpus: Iterable[str] | None = None) -> int:
    """Write `events` (time-ordered here) that pass the filters; returns how many."""
    kinds_f = frozenset(kinds) if kinds else None
    cpus_f = frozenset(cpus) if cpus else None
    vcpus_f = frozenset(vcpus) if vcpus else None
    log = event_logger(stream, console)
    n = 0
    for event in sorted(events, key=lambda e: e[0]):
        if not matches(event, kinds_f, cpus_f, vcpus_f):
            continue
        t, kind, cpu, vcpu, fields = event
        log.msg(kind, t_ns=t, cpu=cpu, vcpu=vcpu, **fields)
        n += 1
    return n
