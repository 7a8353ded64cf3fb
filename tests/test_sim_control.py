"""The run-control hook of `tdsim.sim.Simulation.run`: progress between chunks of simulated
time, and a stop that keeps the results so far (what `tdsim run` builds its progress bar and
Ctrl-C handling on)."""

from pathlib import Path

import pytest

from tdsim.scenario import load_scenario
from tdsim.sim import Simulation
from tdsim.trace import Tracer

SCENARIOS = Path(__file__).parents[1] / "scenarios"


@pytest.mark.parametrize(("name", "duration_us", "chunk_ns"), [
    ("aborts_zero_step", 10_000, 77_777),  # v6.16: violations
    ("irq_ipi_shootdown", 1_000, 10_000),  # events at chunk boundaries
    ("baseline", 20_000, 3_000_000),
])
def test_chunked_run_equals_unchunked(name, duration_us, chunk_ns):
    """Running in chunks with a progress callback changes no metric, violation, event or
    event count."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml", [
        "kvm.compare=[]", "kvm.host_state=v6.16", f"sim.duration_us={duration_us}"])
    plain, chunked = Tracer(), Tracer()
    a = Simulation(scenario, plain).run()
    seen: list[tuple[int, int]] = []
    b = Simulation(scenario, chunked).run(progress=lambda now, end: seen.append((now, end)),
                                          chunk_ns=chunk_ns)
    assert (b.metrics, b.violations) == (a.metrics, a.violations)
    assert chunked.events == plain.events
    assert b.perf["sim_events"] == a.perf["sim_events"]
    assert not b.partial
    assert "partial" not in b.to_dict()
    end = a.metrics["sim.duration_ns"]
    assert seen[-1] == (end, end)
    assert len(seen) == -(-end // chunk_ns)


def test_progress_times_are_integer_nanoseconds():
    """Chunk boundaries keep SimPy's clock an integer (a float clock would change every
    later event time)."""
    scenario = load_scenario(SCENARIOS / "baseline.toml")
    seen: list[int] = []
    Simulation(scenario).run(progress=lambda now, end: seen.append(now), chunk_ns=999_999)
    assert seen
    assert all(type(t) is int for t in seen)


def test_request_stop_keeps_a_consistent_partial_result():
    """A stop requested mid-run ends it at that instant; the metrics cover the time up to
    the stop, CPU time still adds up, and the document says partial."""
    scenario = load_scenario(SCENARIOS / "baseline.toml")
    sim = Simulation(scenario)

    def progress(now: int, end: int) -> None:
        if now >= 5_000_000:
            sim.request_stop()

    r = sim.run(progress=progress, chunk_ns=1_000_000)
    assert r.partial
    assert r.to_dict()["partial"] is True
    stopped = r.metrics["sim.duration_ns"]
    assert 5_000_000 <= stopped < 20_000_000
    for cpu in range(scenario.data["host"]["cpus"]):
        assert sum(v for k, v in r.metrics.items()
                   if k.startswith(f"cpu.{cpu}.ns.")) == stopped
    full = Simulation(scenario).run()
    assert r.metrics["exits"] < full.metrics["exits"]


def test_stop_before_the_run_stops_at_time_zero():
    """A stop requested before the run starts (a Ctrl-C during the build) stops at t = 0."""
    sim = Simulation(load_scenario(SCENARIOS / "baseline.toml"))
    sim.request_stop()
    r = sim.run()
    assert r.partial
    assert r.metrics["sim.duration_ns"] == 0
