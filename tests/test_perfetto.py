"""The Chrome trace-event / Perfetto export, validated against the trace-event format."""

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tdsim.cli import main
from tdsim.perfetto import _slices, build_trace
from tdsim.scenario import load_scenario, scenario_from_dict
from tdsim.sim import run
from tdsim.trace import Tracer

SCENARIOS = Path(__file__).parent.parent / "scenarios"
BASELINE = SCENARIOS / "baseline.toml"

# Trace Event Format (Google's "Trace Event Format" document, as read by Perfetto's JSON
# importer): the fields each phase needs besides "ph".
REQUIRED = {
    "X": {"name", "pid", "tid", "ts", "dur"},
    "i": {"name", "pid", "tid", "ts", "s"},
    "s": {"name", "cat", "id", "pid", "tid", "ts"},
    "f": {"name", "cat", "id", "pid", "tid", "ts"},
    "C": {"name", "pid", "ts", "args"},
    "M": {"name", "pid", "args"},
}


def validate(doc):
    """Check `doc` against the trace-event format; returns the events grouped by phase."""
    assert isinstance(doc["traceEvents"], list)
    by_ph = defaultdict(list)
    for e in doc["traceEvents"]:
        missing = REQUIRED[e["ph"]] - e.keys()
        assert not missing, (e, missing)
        assert type(e["pid"]) is int, e
        assert type(e.get("tid", 0)) is int, e
        if "ts" in e:
            assert isinstance(e["ts"], (int, float)), e
            assert e["ts"] >= 0, e
        by_ph[e["ph"]].append(e)
    names = {(e["pid"], e["tid"]) for e in by_ph["M"] if e["name"] == "thread_name"}
    procs = {e["pid"] for e in by_ph["M"] if e["name"] == "process_name"}
    tids = [tid for _, tid in names]
    # unique, and never a pid: Perfetto takes tid == pid for the process's main thread
    assert len(set(tids)) == len(tids)
    assert not set(tids) & procs
    for e in by_ph["X"] + by_ph["i"] + by_ph["s"] + by_ph["f"]:
        assert (e["pid"], e["tid"]) in names, f"track without a name: {e}"
    assert {e["pid"] for e in by_ph["C"]} <= procs
    for e in by_ph["i"]:
        assert e["s"] in ("g", "p", "t")
    for e in by_ph["C"]:
        assert all(isinstance(v, (int, float)) for v in e["args"].values())
    tracks = defaultdict(list)
    for e in by_ph["X"]:
        assert e["dur"] > 0, e
        tracks[(e["pid"], e["tid"])].append(e)
    for key, slices in tracks.items():
        for a, b in pairwise(slices):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-9, f"overlap on {key}: {a} {b}"
    starts = {e["id"] for e in by_ph["s"]}
    assert starts == {e["id"] for e in by_ph["f"]}
    marks = defaultdict(set)
    for e in by_ph["i"]:
        marks[(e["pid"], e["tid"])].add(e["ts"])
    for e in by_ph["s"] + by_ph["f"]:  # the importer binds flow ends to enclosing slices
        assert any(x["ts"] <= e["ts"] <= x["ts"] + x["dur"]
                   for x in tracks[(e["pid"], e["tid"])]) \
            or e["ts"] in marks[(e["pid"], e["tid"])], f"flow end outside a slice: {e}"
    check_vcpu_tracks_match_cpu_tracks(doc)
    return by_ph


ON_CPU = {"running", "userspace", "halt_poll"}  # the vCPU thread's states on a CPU


def check_vcpu_tracks_match_cpu_tracks(doc):
    """A vCPU's track says it is on a CPU (running, userspace, halt_poll) exactly when a CPU
    track shows one of its slices (guest, kvm or vmm), and off one (runnable, halted,
    stopped) exactly when none does."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name"}
    on_cpu, said_on, said_off = defaultdict(list), defaultdict(list), defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] != "X":
            continue
        span = (round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000))
        if e["pid"] == 1:
            if e["args"]["what"] != "host_task":
                on_cpu[e["args"]["thread"]].append(span)
        else:
            (said_on if e["name"] in ON_CPU else said_off)[names[(e["pid"], e["tid"])]].append(
                span)

    def overlap(a, b):  # of two lists of disjoint spans
        a, b, i, j, total = sorted(a), sorted(b), 0, 0, 0
        while i < len(a) and j < len(b):
            total += max(0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
            if a[i][1] < b[j][1]:
                i += 1
            else:
                j += 1
        return total

    for vcpu in set(said_on) | set(said_off):
        busy = sum(t1 - t0 for t0, t1 in on_cpu[vcpu])
        assert overlap(said_off[vcpu], on_cpu[vcpu]) == 0, vcpu
        assert overlap(said_on[vcpu], on_cpu[vcpu]) == busy == sum(
            t1 - t0 for t0, t1 in said_on[vcpu]), vcpu


def traced(data_or_path, overrides=None):
    scenario = (load_scenario(data_or_path, overrides) if isinstance(data_or_path, Path)
                else scenario_from_dict(data_or_path, overrides=overrides))
    tracer = Tracer()
    result = run(scenario, tracer=tracer)
    return scenario, result, tracer


def test_baseline_trace_validates():
    """The baseline's trace has named tracks, non-overlapping slices, counters, flows."""
    scenario, result, tracer = traced(BASELINE)
    by_ph = validate(build_trace(scenario.data, tracer.events, 20_000_000))
    assert len(by_ph["C"]) == 2 * 20  # two counters, one value per simulated ms
    assert sum(e["args"]["per ms"] for e in by_ph["C"] if e["name"] == "TD exits") \
        == result.metrics["exits"]
    assert sum(e["args"]["per ms"] for e in by_ph["C"] if e["name"] == "WRMSRs") \
        == result.metrics["wrmsr.total"]
    assert len(by_ph["s"]) == result.metrics["pi_delivered"]


def test_cpu_track_time_adds_up_to_busy_time():
    """A CPU track's slices cover exactly the CPU's non-idle time."""
    scenario, result, tracer = traced(BASELINE)
    doc = build_trace(scenario.data, tracer.events, 20_000_000)
    busy = defaultdict(float)
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and e["pid"] == 1:
            busy[e["tid"] - 1000] += e["dur"]
    m = result.metrics
    for cpu in range(8):
        expected_ns = 20_000_000 - m[f"cpu.{cpu}.ns.idle"]
        assert abs(busy[cpu] * 1000 - expected_ns) < 1e-3 * 1000, cpu


def test_tiny_timeline_slices():
    """One pinned vCPU's CPU track reads kvm, guest, kvm, guest, kvm with exact times."""
    scenario, _, tracer = traced({
        "sim": {"duration_us": 30, "seed": 1}, "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"compute_us": 10,
                                                      "compute_dist": "fixed"}}]})
    doc = build_trace(scenario.data, tracer.events, 30_000)
    cpu1 = [(e["name"], e["ts"], e["dur"]) for e in doc["traceEvents"]
            if e["ph"] == "X" and (e["pid"], e["tid"]) == (1, 1001)]
    # kvm up to the first entry 5.27 us (with the RDMSR of the host DEBUGCTL), the guest's
    # 10 us + 0.4 us TDVMCALL, then 2.375 us of exit and entry work (WRPKRU 10 ns and the
    # IA32_XSS WRMSR 35 ns after the exit, the RDMSR 30 ns before the entry)
    assert cpu1 == [("kvm td0.vcpu0", 0.0, 5.27), ("guest td0.vcpu0", 5.27, 10.4),
                    ("kvm td0.vcpu0", 15.67, 2.375), ("guest td0.vcpu0", 18.045, 10.4),
                    ("kvm td0.vcpu0", 28.445, 1.555)]


def test_kick_draws_a_flow_to_the_ipi():
    """A kvm_vcpu_kick of a vCPU in the guest is a flow arrow ending on its CPU's track."""
    scenario = scenario_from_dict({
        "sim": {"duration_us": 30, "seed": 1}, "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"compute_us": 10,
                                                      "compute_dist": "fixed"}}]})
    from tdsim.sim import Simulation

    tracer = Tracer()
    sim = Simulation(scenario, tracer)
    vcpu = sim.vcpus[0]

    def kicker():
        yield sim.env.timeout(8_000)  # inside the first guest slice (5.27..15.67 us)
        vcpu.kvm_vcpu_kick()

    sim.env.process(kicker())
    sim.run()
    by_ph = validate(build_trace(scenario.data, tracer.events, 30_000))
    (s,), (f,) = by_ph["s"], by_ph["f"]
    assert (s["ts"], s["pid"], s["tid"]) == (8.0, 2, 2000)  # td0.vcpu0's track
    assert (f["ts"], f["pid"], f["tid"]) == (8.0 + scenario.data["costs"]["ipi_ns"] / 1000,
                                             1, 1001)  # cpu1


def test_cli_writes_log_and_trace(tmp_path):
    """`tdsim run --log --trace` writes a JSON-lines log and a valid trace for the baseline."""
    log, trace, res = tmp_path / "b.jsonl", tmp_path / "b.json", tmp_path / "r.json"
    assert main(["run", str(BASELINE), "--log", str(log), "--trace", str(trace),
                 "--json", str(res)]) == 0
    validate(json.loads(trace.read_text()))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0].keys() >= {"event", "t_ns", "timestamp", "cpu", "vcpu"}
    exits = json.loads(res.read_text())["metrics"]["exits"]
    assert sum(r["event"] == "kvm_exit" for r in records) == exits > 0


def test_violations_are_instant_markers_on_their_cpu(tmp_path):
    """Each recorded violation is an "i" marker on its CPU's track, at its time."""
    (tmp_path / "wrong.py").write_text(
        "from tdsim.strategies import Current\n"
        "class NoKgsRestore(Current):\n"
        "    def prepare_switch_to_host(self, vcpu, cpu):\n"
        "        pass\n")
    scenario, result, tracer = traced({
        "sim": {"duration_us": 100, "seed": 4}, "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"host_state": f"{tmp_path / 'wrong.py'}:NoKgsRestore"},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"compute_us": 5, "mix": {"io": 1}}}]})
    by_ph = validate(build_trace(scenario.data, tracer.events, 100_000))
    marks = [(e["name"], e["ts"], e["tid"]) for e in by_ph["i"]]
    assert marks == [(f"violation: {v['invariant']}", v["t_ns"] / 1000, 1000 + v["cpu"])
                     for v in result.violations]
    assert marks


@given(cpus=st.integers(1, 3), vcpus=st.integers(1, 3), tasks=st.integers(0, 2),
       seed=st.integers(0, 1000), io=st.sampled_from([0.0, 1.0]),
       hlt=st.sampled_from([0.0, 0.3]), tick=st.sampled_from([0, 1000]))
@settings(max_examples=30, deadline=None)
def test_random_runs_give_valid_traces_matching_the_cpu_split(cpus, vcpus, tasks, seed, io, hlt,
                                                           tick):
    """Over small random scenarios the trace validates, and each CPU track's slices add up,
    per kind of work, to the CPU time split in the metrics."""
    scenario, result, tracer = traced({
        "sim": {"duration_us": 300, "seed": seed},
        "host": {"cpus": cpus, "tick_hz": tick, "tasks": tasks, "task_run_us": 40,
                 "task_sleep_us": 60},
        "vm": [{"vcpus": vcpus, "workload": {"compute_us": 5, "timer_hz": 20000,
                                             "mix": {"cpuid": 1.0, "io": io, "hlt": hlt}}}]})
    doc = build_trace(scenario.data, tracer.events, 300_000)
    validate(doc)
    split = defaultdict(float)
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and e["pid"] == 1:
            split[(e["tid"] - 1000, e["args"]["what"])] += e["dur"] * 1000
    for cpu in range(cpus):
        for what in ("guest", "kvm", "vmm", "host_task"):
            assert abs(split[(cpu, what)] - result.metrics[f"cpu.{cpu}.ns.{what}"]) < 1e-3, \
                (cpu, what)


def test_a_state_that_lasts_no_time_is_dropped():
    """running, runnable and running again at one instant: one running slice, not two."""
    changes = [(0, "running", {}), (10, "runnable", {}), (10, "running", {}),
               (20, "halted", {}), (30, "halted", {}), (40, "running", {}), (50, "idle", {})]
    got = [(e["name"], e["ts"], e["dur"]) for e in _slices(changes, 60, 2, 2000, skip="idle")]
    assert got == [("running", 0.0, 0.02), ("halted", 0.02, 0.02), ("running", 0.04, 0.01)]


def vcpu_states(doc):
    """vCPU name -> its track's (state, start ns, end ns), in time order."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"]
             if e["ph"] == "M" and e["name"] == "thread_name" and e["pid"] > 1}
    out = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and (e["pid"], e["tid"]) in names:
            out[names[(e["pid"], e["tid"])]].append(
                (e["name"], round(e["ts"] * 1000), round((e["ts"] + e["dur"]) * 1000)))
    return {k: sorted(v, key=lambda s: s[1]) for k, v in out.items()}


def test_vcpu_stopped_after_a_fatal_refusal_is_drawn_stopped():
    """aborts_module_refusals under v6.16: td0.vcpu1's entry is refused fatally
    (TDX_INCONSISTENT_MSR), the VMM stops it, and its track says "stopped" from then to the
    end of the run (it used to say "running"); the others never stop.  Every vCPU track
    covers the run without a gap, and every state a vCPU can be in appears."""
    end = 50_000_000
    scenario, result, tracer = traced(SCENARIOS / "aborts_module_refusals.toml",
                                      {"kvm.compare": [], "kvm.host_state": "v6.16"})
    assert result.metrics["sim.duration_ns"] == end
    doc = build_trace(scenario.data, tracer.events, end)
    validate(doc)
    states = vcpu_states(doc)
    stopped = [v for v in states if result.metrics.get(f"vm.td0.vcpu.{v[-1]}.vcpu_stopped")]
    assert stopped == ["td0.vcpu1"]
    (t_refused,) = [e[0] for e in tracer.events if e[1] == "seamcall" and e[3] == "td0.vcpu1"
                    and e[4]["status"] == "TDX_INCONSISTENT_MSR"]
    name, t0, t1 = states["td0.vcpu1"][-1]
    assert (name, t1) == ("stopped", end)
    assert t_refused <= t0 < t_refused + 10_000  # the put, the return to the VMM, the stop
    for vcpu, spans in states.items():
        assert (spans[0][1], spans[-1][2]) == (0, end), vcpu
        assert all(a[2] == b[1] and a[0] != b[0] for a, b in pairwise(spans)), vcpu
        assert ("stopped" in {s[0] for s in spans}) == (vcpu == "td0.vcpu1")
    assert {s[0] for spans in states.values() for s in spans} == {
        "running", "userspace", "halted", "stopped"}


def test_halted_slices_are_the_halts():
    """Every time a vCPU sleeps in kvm_vcpu_block (halt_block) is one "halted" slice."""
    scenario, result, tracer = traced(SCENARIOS / "aborts_module_refusals.toml",
                                      {"kvm.compare": [], "sim.duration_us": 10_000})
    states = vcpu_states(build_trace(scenario.data, tracer.events, 10_000_000))
    for vcpu, spans in states.items():
        halted = sum(s[0] == "halted" for s in spans)
        assert halted == result.metrics[f"vm.td0.vcpu.{vcpu[-1]}.halt_block"] > 0, vcpu


def test_vm_stopped_by_the_vmm_draws_every_vcpu_stopped():
    """A fatal-error report stops the VM (fatal_error = stop): the reporting vCPU stops, the
    other is signalled out and parks in the VMM; both tracks end "stopped"."""
    scenario, _, tracer = traced({
        "sim": {"duration_us": 200, "seed": 1}, "host": {"cpus": 3, "tick_hz": 0},
        "vm": [{"vcpus": 2, "pin": [1, 2], "workload": {"program": [
            {"op": "compute", "us": 30, "vcpus": [0]},
            {"op": "tdvmcall", "r11": "report_fatal_error", "name": "fatal", "vcpus": [0]},
            {"op": "loop", "count": 0, "vcpus": [1], "steps": [
                {"op": "compute", "us": 2}, {"op": "cpuid", "name": "spin"}]}]}}]})
    doc = build_trace(scenario.data, tracer.events, 200_000)
    validate(doc)
    states = vcpu_states(doc)
    for vcpu in ("td0.vcpu0", "td0.vcpu1"):
        name, t0, t1 = states[vcpu][-1]
        assert (name, t1) == ("stopped", 200_000), vcpu
        assert 30_000 < t0 < 60_000, vcpu


def test_halt_polling_is_its_own_state():
    """With halt polling on, a halted vCPU first polls on its CPU ("halt_poll"), and the
    polls add up to the time the metrics count."""
    scenario, result, tracer = traced({
        "sim": {"duration_us": 2000, "seed": 3}, "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"halt_poll_ns": 20_000},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"compute_us": 20, "timer_hz": 5000,
                                                      "mix": {"cpuid": 1.0, "hlt": 1.0}}}]})
    doc = build_trace(scenario.data, tracer.events, 2_000_000)
    validate(doc)
    spans = vcpu_states(doc)["td0.vcpu0"]
    polls = [t1 - t0 for name, t0, t1 in spans if name == "halt_poll"]
    assert polls
    assert sum(polls) == result.metrics["halt.poll_ns"]


def test_preempted_vcpu_is_drawn_runnable():
    """Two vCPUs share one CPU and halt now and then: each one woken while the other runs
    waits for the CPU ("runnable")."""
    scenario, _, tracer = traced({
        "sim": {"duration_us": 3000, "seed": 2}, "host": {"cpus": 2, "tick_hz": 4000},
        "vm": [{"vcpus": 2, "pin": [1, 1], "workload": {
            "compute_us": 30, "timer_hz": 5000, "mix": {"cpuid": 1.0, "io": 0.5, "hlt": 0.5}}}]})
    doc = build_trace(scenario.data, tracer.events, 3_000_000)
    validate(doc)  # which checks that runnable is off the CPU
    for vcpu, spans in vcpu_states(doc).items():
        assert sum(t1 - t0 for name, t0, t1 in spans if name == "runnable") > 100_000, vcpu
