"""`make bench`: how fast tdsim simulates TD exits, against a bare SimPy loop.

Printed from one run, every figure a median of `--repeat` alternating runs (tdsim, then the
bare loop, then tdsim again ...), so both see the same machine state:

* the fixed benchmark -- 4 TDs x 16 vCPUs on 64 host CPUs with 16 host tasks, host ticks,
  guest timers and a mixed TDVMCALL workload: simulated TD exits per wall second,
  ``events_per_td_exit`` (SimPy events scheduled per TD exit: how close the model is to one
  event per real concurrency point), the rate of a bare SimPy loop doing two timeouts per
  "exit" with as many processes, and the ratio of the two;
* a scaling table: CPU microseconds per TD exit at 8, 64, 256, 1,024 and 4,096 vCPUs (one
  host CPU per vCPU, TDs of up to 16 vCPUs, the same workload, about the same number of
  exits), against the bare loop with as many processes, and each one's growth from 8 vCPUs;
* what tracing costs (`tdsim.bench_trace`);
* with a fresh compiled build (``make compiled``, docs/performance.md): the fixed benchmark
  in subprocesses, pure Python and compiled alternately, each with its bare-loop ratio
  measured in the same process: CPU microseconds per TD exit both ways and the speed-up.

This is a benchmark, not a test: absolute numbers depend on the machine and its load; the
ratios, measured side by side, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

import simpy

from . import _compiled
from .scenario import scenario_from_dict
from .sim import run

_WORKLOAD = {"compute_us": 8, "compute_dist": "exp", "timer_hz": 1000,
             "mix": {"cpuid": 4.0, "rdmsr": 1.0, "wrmsr": 2.0, "hypercall": 1.0,
                     "io": 0.5, "mmio": 0.25, "hlt": 0.05}}

BENCH_SCENARIO: dict[str, Any] = {
    "sim": {"duration_us": 30000, "seed": 7},
    "host": {"cpus": 64, "tick_hz": 250, "tasks": 16, "task_run_us": 200,
             "task_sleep_us": 3000},
    "kvm": {"host_state": "current"},
    "vm": [{"name": f"td{i}", "vcpus": 16, "workload": _WORKLOAD} for i in range(4)],
}

SCALING_VCPUS = (8, 64, 256, 1024, 4096)
SCALING_EXITS = 120_000  # about this many TD exits per scaling run


def scaling_scenario(vcpus: int) -> dict[str, Any]:
    """The benchmark's workload on `vcpus` vCPUs, one host CPU each, about SCALING_EXITS
    TD exits in all."""
    per_vm = min(16, vcpus)
    # about 90,000 exits per vCPU per simulated second with this workload
    duration_us = max(50.0, SCALING_EXITS / (vcpus * 90_000) * 1e6)
    return {
        "sim": {"duration_us": round(duration_us, 1), "seed": 7},
        "host": {"cpus": vcpus, "tick_hz": 250, "tasks": vcpus // 4, "task_run_us": 200,
                 "task_sleep_us": 3000},
        "kvm": {"host_state": "current"},
        "vm": [{"name": f"td{i}", "vcpus": per_vm, "workload": _WORKLOAD}
               for i in range(vcpus // per_vm)],
    }


def bare_simpy(processes: int, exits: int) -> tuple[float, float]:
    """A bare SimPy loop, each process doing two timeouts per exit: (exits per wall second,
    CPU microseconds per exit)."""
    env = simpy.Environment()
    per_proc = max(1, exits // processes)

    def proc(env: simpy.Environment) -> Generator[simpy.Event, Any, None]:
        for _ in range(per_proc):
            yield env.timeout(300)
            yield env.timeout(2000)

    for _ in range(processes):
        env.process(proc(env))
    t0, c0 = time.perf_counter(), time.process_time()
    env.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = per_proc * processes
    return n / wall, cpu / n * 1e6


def bench_tdsim(overrides: dict[str, Any] | None = None,
                tracer_factory: Callable[[], Any] | None = None,
                scenario: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run of the benchmark scenario (or `scenario`); its ``perf`` dict."""
    sc = scenario_from_dict(scenario or BENCH_SCENARIO, name="<bench>", overrides=overrides)
    tracer = tracer_factory() if tracer_factory else None
    result = run(sc, tracer=tracer)
    return result.perf


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tdsim.bench", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-tracing", action="store_true", help="skip the tracing costs")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument("--no-compiled", action="store_true",
                        help="skip the pure-versus-compiled comparison")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # one run for compiled_table, in a process of its own
        print(json.dumps(_one_pair()))
        return 0
    rates, bare, events = [], [], []
    exits = 0
    for _ in range(args.repeat):
        perf = bench_tdsim()
        rates.append(perf["td_exits_per_s"])
        events.append(perf["events_per_td_exit"])
        exits = perf["td_exits"]
        bare.append(bare_simpy(64, exits)[0])
    ratios = sorted(r / b for r, b in zip(rates, bare, strict=True))
    print("tdsim benchmark: 4 TDs x 16 vCPUs, 64 host CPUs, 16 host tasks, 30 ms simulated"
          + (" (compiled build)" if _compiled.ACTIVE else ""))
    print(f"  TD exits per run            {exits:,}")
    print(f"  tdsim TD exits / wall s     {_med(rates):,.0f}   (runs: "
          + ", ".join(f"{r:,.0f}" for r in rates) + ")")
    print(f"  events per TD exit          {_med(events):.3f}")
    print(f"  bare SimPy exits / wall s   {_med(bare):,.0f}   (2 timeouts per exit, "
          "64 processes)")
    print(f"  ratio tdsim / bare          {_med(rates) / _med(bare):.3f}   (per-pair ratios "
          f"{ratios[0]:.3f} .. {ratios[-1]:.3f})")
    if not args.no_scaling:
        print("\n".join(scaling_table(args.repeat)))
    if not args.no_tracing and _compiled.ACTIVE:
        print("tracing cost: measured in pure Python only (its floor is a stripped copy of "
              "the sources)")
    elif not args.no_tracing:
        # What tracing costs, off and on, against a build with the tracer checks stripped.
        from .bench_trace import measure, report

        print("\n".join(report(measure(BENCH_SCENARIO, args.repeat))))
    if not args.no_compiled:
        print("\n".join(compiled_table(args.repeat)))
    return 0


def _one_pair() -> dict[str, Any]:
    """The fixed benchmark once and the bare loop once, in this process."""
    perf = bench_tdsim()
    bare_rate, bare_cpu_us = bare_simpy(64, perf["td_exits"])
    cpu_us = perf["cpu_s"] / perf["td_exits"] * 1e6
    return {"cpu_us": cpu_us, "ratio": perf["td_exits_per_s"] / bare_rate,
            "ratio_cpu": bare_cpu_us / cpu_us, "compiled": _compiled.ACTIVE}


def compiled_table(repeat: int) -> list[str]:
    """The fixed benchmark pure and compiled, in alternating subprocesses (`repeat` each):
    CPU us per TD exit and the ratio to the bare loop, medians with their ranges.  The ratio
    is given by wall time (as in the fixed benchmark above) and by CPU time (less sensitive
    to other work on a shared machine)."""
    try:
        modules = _compiled.check()
    except _compiled.CompiledBuildError as e:
        if not (_compiled.build_dir() / "manifest.json").exists():
            return ["compiled build: none (`make compiled` builds one)"]
        return [f"compiled build: not measured: {e}"]
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for _ in range(repeat):
        for compiled in (False, True):
            env = dict(os.environ, **{_compiled.ENV_VAR: "1" if compiled else "0"})
            out = subprocess.run([sys.executable, "-m", "tdsim.bench", "--worker"], env=env,
                                 capture_output=True, text=True, check=True)
            one = json.loads(out.stdout)
            if one["compiled"] != compiled:
                raise AssertionError(f"tdsim bug: a {'compiled' if compiled else 'pure'} "
                                     "bench worker ran the other build")
            runs[compiled].append(one)

    def fig(compiled: bool, key: str, fmt: str) -> str:
        xs = [r[key] for r in runs[compiled]]
        return f"{_med(xs):{fmt}} ({min(xs):{fmt}} .. {max(xs):{fmt}})"

    speedup = sorted(p["cpu_us"] / c["cpu_us"] for p, c in zip(runs[False], runs[True],
                                                                strict=True))
    return [f"compiled build ({len(modules)} modules), median of {repeat} alternating "
            "subprocess runs each (range):",
            f"  CPU us per TD exit   pure {fig(False, 'cpu_us', '.2f')}   compiled "
            f"{fig(True, 'cpu_us', '.2f')}   speed-up {_med(speedup):.2f}x (pairs "
            f"{speedup[0]:.2f} .. {speedup[-1]:.2f})",
            f"  ratio tdsim / bare   pure {fig(False, 'ratio', '.3f')}   compiled "
            f"{fig(True, 'ratio', '.3f')}   (wall time)",
            f"  ratio tdsim / bare   pure {fig(False, 'ratio_cpu', '.3f')}   compiled "
            f"{fig(True, 'ratio_cpu', '.3f')}   (CPU time)"]


def scaling_table(repeat: int) -> list[str]:
    """CPU us per TD exit at each size, tdsim and bare SimPy side by side."""
    rows = []
    for n in SCALING_VCPUS:
        reps = max(1, repeat if n <= 1024 else min(repeat, 3))
        tds, bares, events = [], [], []
        exits = 0
        for _ in range(reps):
            perf = bench_tdsim(scenario=scaling_scenario(n))
            exits = perf["td_exits"]
            tds.append(perf["cpu_s"] / exits * 1e6)
            events.append(perf["events_per_td_exit"])
            bares.append(bare_simpy(n, exits)[1])
        rows.append((n, exits, _med(tds), _med(bares), _med(events)))
    base_td, base_bare = rows[0][2], rows[0][3]
    out = ["scaling: CPU us per TD exit (median of alternating runs), one host CPU per vCPU",
           f"  {'vCPUs':>6} {'TD exits':>9} {'tdsim':>7} {'bare':>6} {'ratio':>6} "
           f"{'tdsim x':>8} {'bare x':>7} {'growth':>7} {'ev/exit':>8}"]
    for n, exits, td, bare, ev in rows:
        g_td, g_bare = td / base_td, bare / base_bare
        out.append(f"  {n:>6} {exits:>9,} {td:>7.2f} {bare:>6.2f} {bare / td:>6.3f} "
                   f"{g_td:>8.2f} {g_bare:>7.2f} {g_td / g_bare:>7.2f} {ev:>8.3f}")
    out.append("  (tdsim x, bare x: cost per exit relative to 8 vCPUs; growth: tdsim's over "
               "bare's)")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
