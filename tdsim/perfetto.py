"""Chrome trace-event JSON export (``tdsim run --trace FILE.json``), for ui.perfetto.dev.

Built after the run from the tracer's events:

* process "host CPUs" (pid 1), one track per host CPU (tid = CPU index + 1): complete ("X")
  slices of what the CPU runs -- ``guest td0.vcpu1``, ``kvm td0.vcpu1``, ``vmm td0.vcpu1``,
  a host task's name -- from the ``cpu_state`` events; idle time is left empty;
* one process per VM (pid 2 + VM index), one track per vCPU (tid = vCPU index + 1): slices of
  the vCPU thread's state (``running`` in KVM_RUN, ``userspace``, ``runnable``, ``halted``)
  from the ``vcpu_state`` events;
* flow arrows ("s" -> "f"), from the vCPU's track to its CPU's: a kick to the IPI's arrival,
  and a posted interrupt (``pi_posted``) to its delivery (``pi_delivered``); both ends lie
  inside a slice of their track, which is what the importer binds them to;
* instant markers ("i", thread scope) for late aborts and invariant violations;
* counters ("C") on the host process: WRMSRs and TD exits per millisecond of simulated time;
* metadata ("M") naming every process and track.

Times in the format are microseconds (``ts``, ``dur``), as floats: the model's integer
nanoseconds divided by 1000, so nothing is rounded away.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .trace import Event

HOST_PID = 1
BUCKET_NS = 1_000_000  # counters: per millisecond


def _us(t_ns: int) -> float:
    return t_ns / 1000


class _Tracks:
    """The (pid, tid) of each track and the metadata events that name them."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.meta: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": HOST_PID, "tid": 0,
             "args": {"name": "host CPUs"}},
            {"ph": "M", "name": "process_sort_index", "pid": HOST_PID, "tid": 0,
             "args": {"sort_index": 0}},
        ]
        for cpu in range(data["host"]["cpus"]):
            self._thread(HOST_PID, cpu + 1, f"cpu{cpu}")
        self.vcpu: dict[str, tuple[int, int]] = {}
        for vi, vm in enumerate(data["vm"]):
            pid = 2 + vi
            self.meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                              "args": {"name": f"{vm['name']} vCPUs"}})
            self.meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                              "args": {"sort_index": 1 + vi}})
            for i in range(vm["vcpus"]):
                self.vcpu[f"{vm['name']}.vcpu{i}"] = (pid, i + 1)
                self._thread(pid, i + 1, f"{vm['name']}.vcpu{i}")

    def _thread(self, pid: int, tid: int, name: str) -> None:
        self.meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                          "args": {"name": name}})
        self.meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                          "args": {"sort_index": tid}})

    @staticmethod
    def cpu(index: int) -> tuple[int, int]:
        return HOST_PID, index + 1

    def of(self, cpu: int, vcpu: str | None) -> tuple[int, int] | None:
        """The CPU's track; the vCPU's when no CPU is involved; None for neither."""
        if cpu >= 0:
            return self.cpu(cpu)
        return self.vcpu.get(vcpu) if vcpu else None


def _slices(changes: list[tuple[int, str, dict[str, Any]]], end_ns: int, pid: int, tid: int,
            skip: str | None = None) -> list[dict[str, Any]]:
    """Complete events from a time-ordered list of state changes (t, name, args): each state
    lasts until the next change (or `end_ns`); consecutive equal states merge; `skip` is a
    state drawn as nothing."""
    out = []
    current: tuple[int, str, dict[str, Any]] | None = None
    for t, name, args in [*changes, (end_ns, None, {})]:
        if current is not None and name == current[1] and t < end_ns:
            continue
        if current is not None and current[1] != skip and t > current[0]:
            out.append({"ph": "X", "name": current[1], "cat": current[2].get("what", "state"),
                        "pid": pid, "tid": tid, "ts": _us(current[0]),
                        "dur": _us(t - current[0]), "args": current[2]})
        current = (t, name, args)
    return out


def _cpu_state_name(what: str, thread: str | None) -> str:
    if what in ("host_task", "idle") or thread is None:
        return thread or what
    return f"{what} {thread}"


def build_trace(data: dict[str, Any], events: list[Event], end_ns: int) -> dict[str, Any]:
    """The trace-event document (``{"traceEvents": [...]}``) of a run of scenario `data`."""
    tracks = _Tracks(data)
    ordered = sorted(events, key=lambda e: e[0])
    out: list[dict[str, Any]] = list(tracks.meta)

    cpu_changes: dict[int, list] = defaultdict(list)
    vcpu_changes: dict[str, list] = defaultdict(list)
    wrmsr_per_ms: dict[int, int] = defaultdict(int)
    exits_per_ms: dict[int, int] = defaultdict(int)
    kicks: dict[str, list[tuple[int, int]]] = defaultdict(list)
    posted: dict[str, list[tuple[int, int]]] = defaultdict(list)
    flow_id = 0

    def flow(name: str, start: tuple[int, tuple[int, int]], t: int,
             track: tuple[int, int]) -> None:
        nonlocal flow_id
        flow_id += 1
        (t0, (pid0, tid0)), (pid1, tid1) = start, track
        out.append({"ph": "s", "name": name, "cat": "flow", "id": flow_id, "pid": pid0,
                    "tid": tid0, "ts": _us(t0)})
        out.append({"ph": "f", "bp": "e", "name": name, "cat": "flow", "id": flow_id,
                    "pid": pid1, "tid": tid1, "ts": _us(t)})

    for t, kind, cpu, vcpu, fields in ordered:
        if kind == "cpu_state":
            if fields["what"] == "idle":
                cpu_changes[cpu].append((t, "idle", {}))
            else:
                cpu_changes[cpu].append((t, _cpu_state_name(fields["what"], fields["thread"]),
                                         {"what": fields["what"], "thread": fields["thread"]}))
        elif kind == "vcpu_state":
            vcpu_changes[vcpu].append((t, fields["state"], {}))
        elif kind == "wrmsr":
            wrmsr_per_ms[t // BUCKET_NS] += 1
        elif kind == "kvm_exit":
            exits_per_ms[t // BUCKET_NS] += 1
        elif kind == "kick" and vcpu in tracks.vcpu:
            kicks[vcpu].append((t, tracks.vcpu[vcpu]))
        elif kind == "ipi" and fields.get("why") == "kick" and kicks.get(vcpu):
            flow("kick IPI", kicks[vcpu].pop(0), t, tracks.cpu(fields["dst_cpu"]))
        elif kind == "pi_posted" and vcpu in tracks.vcpu:
            # from the vCPU's track, which always has a state slice to bind the arrow to
            posted[vcpu].append((t, tracks.vcpu[vcpu]))
        elif kind == "pi_delivered" and posted.get(vcpu):
            flow("posted interrupt", posted[vcpu].pop(0), t, tracks.cpu(cpu))
        elif kind in ("late_abort", "violation"):
            track = tracks.of(cpu, vcpu)
            if track is not None:
                name = (f"late abort: {fields['abort']}" if kind == "late_abort"
                        else f"violation: {fields['invariant']}")
                out.append({"ph": "i", "s": "t", "name": name, "cat": kind,
                            "pid": track[0], "tid": track[1], "ts": _us(t),
                            "args": {"vcpu": vcpu, **fields}})

    for cpu, changes in sorted(cpu_changes.items()):
        out += _slices(changes, end_ns, *tracks.cpu(cpu), skip="idle")
    for vcpu, changes in sorted(vcpu_changes.items()):
        if vcpu in tracks.vcpu:
            out += _slices(changes, end_ns, *tracks.vcpu[vcpu])
    for bucket in range(-(-end_ns // BUCKET_NS)):
        ts = _us(bucket * BUCKET_NS)
        out.append({"ph": "C", "name": "WRMSRs per ms", "pid": HOST_PID, "tid": 0, "ts": ts,
                    "args": {"wrmsr": wrmsr_per_ms.get(bucket, 0)}})
        out.append({"ph": "C", "name": "TD exits per ms", "pid": HOST_PID, "tid": 0, "ts": ts,
                    "args": {"exits": exits_per_ms.get(bucket, 0)}})
    return {"traceEvents": out, "displayTimeUnit": "ns",
            "otherData": {"generator": "tdsim", "seed": data["sim"]["seed"]}}


def write_trace(path: str | Path, data: dict[str, Any], events: list[Event],
                end_ns: int) -> int:
    """Write the trace of a run to `path`; returns the number of trace events."""
    doc = build_trace(data, events, end_ns)
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return len(doc["traceEvents"])
