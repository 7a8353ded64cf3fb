"""`make bench`: how fast tdsim simulates TD exits, against a bare SimPy loop.

The fixed benchmark: 4 TDs x 16 vCPUs on 64 host CPUs with 16 host tasks, host ticks, guest
timers, and a mixed TDVMCALL workload.  Printed from one run, side by side:

* simulated TD exits per wall second and ``events_per_td_exit`` (SimPy events scheduled per
  TD exit, a measure of how close the model is to one event per real concurrency point);
* the rate of a bare SimPy loop doing two timeouts per "exit" with the same number of
  processes (64), and the ratio of tdsim's rate to it.

Medians of `--repeat` alternating runs are quoted.  This is a benchmark, not a test: the
numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time

import simpy

from .scenario import scenario_from_dict
from .sim import run

BENCH_SCENARIO = {
    "sim": {"duration_us": 30000, "seed": 7},
    "host": {"cpus": 64, "tick_hz": 250, "tasks": 16, "task_run_us": 200,
             "task_sleep_us": 3000},
    "kvm": {"host_state": "current"},
    "vm": [
        {"name": f"td{i}", "vcpus": 16,
         "workload": {"compute_us": 8, "compute_dist": "exp", "timer_hz": 1000,
                      "mix": {"cpuid": 4.0, "rdmsr": 1.0, "wrmsr": 2.0, "hypercall": 1.0,
                              "io": 0.5, "mmio": 0.25, "hlt": 0.05}}}
        for i in range(4)
    ],
}


def bare_simpy(processes: int, exits: int) -> float:
    """Exits per wall second of a bare SimPy loop: each process does two timeouts per exit."""
    env = simpy.Environment()
    per_proc = exits // processes

    def proc(env):
        for _ in range(per_proc):
            yield env.timeout(300)
            yield env.timeout(2000)

    for _ in range(processes):
        env.process(proc(env))
    t0 = time.perf_counter()
    env.run()
    return per_proc * processes / (time.perf_counter() - t0)


def bench_tdsim(overrides: dict | None = None, tracer_factory=None) -> dict:
    scenario = scenario_from_dict(BENCH_SCENARIO, name="<bench>", overrides=overrides)
    tracer = tracer_factory() if tracer_factory else None
    result = run(scenario, tracer=tracer)
    return result.perf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdsim.bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rates, bare, events = [], [], []
    exits = 0
    for _ in range(args.repeat):
        perf = bench_tdsim()
        rates.append(perf["td_exits_per_s"])
        events.append(perf["events_per_td_exit"])
        exits = perf["td_exits"]
        bare.append(bare_simpy(64, exits))
    med_rate = statistics.median(rates)
    med_bare = statistics.median(bare)
    print("tdsim benchmark: 4 TDs x 16 vCPUs, 64 host CPUs, 16 host tasks, 30 ms simulated")
    print(f"  TD exits per run            {exits:,}")
    print(f"  tdsim TD exits / wall s     {med_rate:,.0f}   (runs: "
          + ", ".join(f"{r:,.0f}" for r in rates) + ")")
    print(f"  events per TD exit          {statistics.median(events):.3f}")
    print(f"  bare SimPy exits / wall s   {med_bare:,.0f}   (2 timeouts per exit, "
          "64 processes)")
    print(f"  ratio tdsim / bare          {med_rate / med_bare:.3f}")
    # What tracing costs, off and on, against a build with the tracer checks stripped.
    from .bench_trace import measure, report

    print("\n".join(report(measure(args.repeat))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
