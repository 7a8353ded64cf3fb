"""The golden snapshot: results of a fixed set of runs, kept to prove that a refactor of the
model changes nothing.

Each case is a scenario (a shipped file with a strategy and a seed, or a random scenario drawn
from a seeded generator that switches on a mix of the model's features).  Its snapshot is the
run's metrics, its violations, and the SHA-256 of its full event trajectory.  Metrics are taken
from an untraced run and checked against the traced run, so tracing itself is covered too.

    python -m tests.golden.snapshot --update     # rewrite tests/golden/snapshot.json.gz
    python -m tests.golden.snapshot              # compare every case, print the differences

A deliberate change of results rewrites the snapshot in the same commit, and the commit
message says which cases changed and why.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("snapshot.json.gz")
STRATEGIES = ("current", "v6.16", "eager")
KINDS = ("cpuid", "rdmsr", "wrmsr", "hypercall", "io", "mmio", "mapgpa", "hlt")


def shipped_cases() -> list[tuple[str, dict[str, Any]]]:
    """Every shipped scenario under each built-in strategy, at its own seed and the next."""
    import tomllib

    out = []
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        seed = tomllib.loads(path.read_text()).get("sim", {}).get("seed", 1)
        for strategy in STRATEGIES:
            for s in (seed, seed + 1):
                out.append((f"{path.stem}/{strategy}/seed{s}",
                            {"path": str(path.relative_to(ROOT)),
                             "overrides": {"kvm.compare": [], "kvm.host_state": strategy,
                                           "sim.seed": s}}))
    return out


def random_scenario(i: int) -> dict[str, Any]:
    """A small random scenario exercising a draw of the model's features."""
    r = random.Random(f"golden:{i}")
    cpus = r.randint(1, 4)

    def pick(*values: Any) -> Any:
        return r.choice(values)

    vms = []
    for vi in range(r.randint(1, 2)):
        flavor = "vmx" if vi > 0 and r.random() < 0.4 else "tdx"
        n = r.randint(1, 3)
        mix = {k: pick(0.0, 0.0, 0.5, 1.0, 2.0) for k in KINDS}
        if flavor == "vmx":
            mix["mapgpa"] = 0.0
        if not any(mix.values()):
            mix["cpuid"] = 1.0
        vm: dict[str, Any] = {
            "flavor": flavor, "vcpus": n,
            "pin": [j % cpus for j in range(n)] if r.random() < 0.5 else None,
            "workload": {"compute_us": pick(2, 5, 20), "compute_dist": pick("fixed", "exp"),
                         "timer_hz": pick(0, 1000, 20000), "mix": mix,
                         "tsc_aux_read_hz": pick(0.0, 1e6) if flavor == "vmx" else 0.0},
        }
        if mix["hlt"] and not vm["workload"]["timer_hz"]:
            vm["workload"]["timer_hz"] = 1000  # something must wake a halted vCPU
        if flavor == "tdx":
            nmi = pick(0, 0, 30000)
            vm["workload"]["timer_mode"] = pick("periodic", "oneshot")
            vm["interrupts"] = {
                "ipi_hz": pick(0, 0, 20000, 100000),
                "ipi_pattern": pick("unicast", "multicast", "broadcast", "shootdown"),
                "device_irq_hz": pick(0, 0, 50000), "device_irq_vcpus": [0],
                "nmi_hz": nmi, "hlt_irqs_off_p": pick(0.0, 0.5) if nmi else 0.0,
                "tlb_flush_hz": pick(0, 0, 20000)}
            vm["sept"] = {"zap_hz": pick(0, 0, 50000), "remove_busy_p": pick(0.0, 0.5),
                          "zap_pages": pick(1, 3), "private_fault_hz": pick(0, 0, 30000),
                          "aug_busy_p": pick(0.0, 0.5)}
        vms.append(vm)
    faults: dict[str, Any] = {}
    for name in ("request_exit_hz", "kick_hz", "request_hz", "signal_hz", "need_resched_hz",
                 "notify_resume_hz", "sept_zap_hz"):
        if r.random() < 0.2:
            faults[name] = pick(2000, 50000, 300000)
    for name in ("operand_busy", "zero_step"):
        if r.random() < 0.2:
            faults[name] = pick(0.01, 0.1)
    for name in ("mmu_reload_fail", "tsc_rollback", "inconsistent_msr", "vcpu_associated",
                 "sw_error", "failed_vmentry", "non_recoverable", "error_exit",
                 "genuine_ept_misconfig"):
        if r.random() < 0.08:
            faults[name] = pick(0.0005, 0.005)
    if "error_exit" in faults:  # its L2 statuses need TD partitioning
        for vm in vms:
            vm["td_partitioning"] = True
    return {
        "sim": {"duration_us": pick(1000, 2000, 4000), "seed": r.randint(0, 2**16),
                "warmup_us": pick(0, 0, 300)},
        "host": {"cpus": cpus, "tick_hz": pick(0, 1000, 4000), "tasks": r.randint(0, 2),
                 "task_run_us": pick(20, 40), "task_sleep_us": pick(40, 60),
                 "timeslice_us": pick(40, 100), "wakeup_preempt": r.random() < 0.7,
                 # host NMIs with a VMX co-tenant crash the model being snapshotted
                 "nmi_hz": 0 if any(v["flavor"] == "vmx" for v in vms) else pick(0, 0, 20000)},
        "kvm": {"host_state": pick(*STRATEGIES), "exit_reason": pick("checked", "raw"),
                "regs_layout": pick("in_place", "copy"),
                "tdvmcall_abi": pick("current", "v6.16"),
                "halt_poll_ns": pick(0, 0, 3000), "lapic_timer_advance_ns": pick(0, 0, 2000)},
        "vm": vms,
        "faults": faults,
    }


def random_cases(n: int = 60) -> list[tuple[str, dict[str, Any]]]:
    return [(f"random/{i}", {"data": random_scenario(i)}) for i in range(n)]


def bench_case() -> list[tuple[str, dict[str, Any]]]:
    from tdsim.bench import BENCH_SCENARIO

    return [("bench/3ms", {"data": BENCH_SCENARIO, "overrides": {"sim.duration_us": 3000}})]


def all_cases() -> list[tuple[str, dict[str, Any]]]:
    return shipped_cases() + random_cases() + bench_case()


def scenario_of(spec: dict[str, Any]) -> Any:
    from tdsim.scenario import load_scenario, scenario_from_dict

    if "path" in spec:
        return load_scenario(ROOT / spec["path"], overrides=spec.get("overrides"))
    return scenario_from_dict(spec["data"], name="<golden>", overrides=spec.get("overrides"))


def _digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _trace_digest(events: list[Any]) -> tuple[str, str, int]:
    """SHA-256 of the trajectory, of its lines sorted (the same events in another order
    within an instant), and the event count."""
    from tdsim.expect import trajectory

    lines = trajectory(events)
    return _digest(lines), _digest(sorted(lines)), len(lines)


def take(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case untraced and traced; its snapshot."""
    from tdsim.sim import run
    from tdsim.trace import Tracer

    scenario = scenario_of(spec)
    try:
        plain = run(scenario)
    except Exception as e:  # a crash is a result too (a model bug the snapshot pins)
        return {"error": f"{type(e).__name__}: {e}"}
    tracer = Tracer()
    traced = run(scenario, tracer=tracer)
    if traced.metrics != plain.metrics or traced.violations != plain.violations:
        raise AssertionError("tracing changed the results")
    sha, sorted_sha, n = _trace_digest(tracer.events)
    return {"metrics": plain.metrics, "violations": plain.violations, "trace_sha256": sha,
            "trace_sorted_sha256": sorted_sha, "trace_events": n}


def load() -> dict[str, Any]:
    with gzip.open(SNAPSHOT, "rt", encoding="utf-8") as f:
        return json.load(f)


def differences(want: dict[str, Any], got: dict[str, Any], limit: int = 12) -> list[str]:
    """Readable differences between two snapshots of one case (empty: identical)."""
    if "error" in want or "error" in got:
        return [] if want == got else [f"error: {want.get('error')} -> {got.get('error')}"]
    out = []
    wm, gm = want["metrics"], got["metrics"]
    for key in sorted(set(wm) | set(gm)):
        if wm.get(key) != gm.get(key):
            out.append(f"metric {key}: {wm.get(key)} -> {gm.get(key)}")
    if want["violations"] != got["violations"]:
        pairs = zip(want["violations"], got["violations"], strict=False)
        out.append(f"violations: {len(want['violations'])} records -> "
                   f"{len(got['violations'])} (first differing: "
                   + next((f"{a} -> {b}" for a, b in pairs if a != b),
                          "a record added or removed") + ")")
    if (want["trace_sha256"], want["trace_events"]) != (got["trace_sha256"],
                                                         got["trace_events"]):
        same = want.get("trace_sorted_sha256") == got.get("trace_sorted_sha256")
        out.append(f"trace: {want['trace_events']} events {want['trace_sha256'][:12]} -> "
                   f"{got['trace_events']} events {got['trace_sha256'][:12]}"
                   + (" (the same events, reordered within an instant)" if same else ""))
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden.snapshot")
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot")
    parser.add_argument("-k", default="", help="only cases whose id contains this text")
    args = parser.parse_args(argv)
    cases = [(cid, spec) for cid, spec in all_cases() if args.k in cid]
    if args.update:
        snap = {cid: take(spec) for cid, spec in cases}
        with gzip.open(SNAPSHOT, "wt", encoding="utf-8") as f:
            json.dump(snap, f, sort_keys=True, separators=(",", ":"))
        print(f"wrote {len(snap)} cases to {SNAPSHOT}")
        return 0
    old = load()
    bad = 0
    for cid, spec in cases:
        diff = differences(old[cid], take(spec)) if cid in old else ["not in the snapshot"]
        if diff:
            bad += 1
            print(f"{cid}:")
            for line in diff:
                print(f"    {line}")
    print(f"{len(cases) - bad} of {len(cases)} cases identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
