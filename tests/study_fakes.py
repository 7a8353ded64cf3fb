"""Stand-ins for the model in study tests: a resolver that needs no scenario loader and runners
whose metrics come from known distributions, so estimates can be checked against the truth.

Module-level functions, so process pools and Dask workers can unpickle them.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from tdsim.study.execute import RunTask

# A stand-in strategy effect: how much each strategy adds to `wrmsr` on top of the shared
# guest behaviour.
STRATEGY_OFFSET = {"current": 0.0, "v6.16": 3.0, "eager": 8.0}
SD_SHARED = 10.0  # spread of the guest behaviour both strategies share (common random numbers)
SD_OWN = 1.0      # spread of each strategy's own noise


def resolve(study, overrides: dict[str, Any]) -> dict[str, Any]:
    """The 'resolved scenario' is just the overrides (sorted for a stable hash)."""
    return {"overrides": dict(sorted(overrides.items()))}


def resolve_rejecting(key: str, bad_value: Any):
    """A resolver whose scenario refuses `key` = `bad_value` (as the real loader would)."""
    from tdsim.scenario import ScenarioError

    def resolver(study, overrides: dict[str, Any]) -> dict[str, Any]:
        if overrides.get(key) == bad_value:
            raise ScenarioError(str(study.scenario_path), key, f"refuses {bad_value!r}")
        return resolve(study, overrides)

    return resolver


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def true_exits_mean(point: dict[str, Any]) -> float:
    return 50.0 + 10.0 * float(point.get("x", 0))


def normal_runner(task: RunTask) -> dict[str, Any]:
    """exits ~ N(50 + 10 x, 5) from the seed alone (identical for every strategy);
    wrmsr = shared N(100, SD_SHARED) + strategy offset + own N(0, SD_OWN)."""
    point = dict(task.point)
    guest = _rng("guest", task.seed, sorted(point.items()))
    own = _rng("own", task.seed, task.strategy, sorted(point.items()))
    exits = guest.gauss(true_exits_mean(point), 5.0)
    wrmsr = guest.gauss(100.0, SD_SHARED) + STRATEGY_OFFSET[task.strategy] + own.gauss(0, SD_OWN)
    return {"metrics": {"exits": exits, "wrmsr.total": wrmsr, "kvm_bug": 0}}


def failing_runner(task: RunTask) -> dict[str, Any]:
    """Like `normal_runner`, but replication 1 of strategy v6.16 always fails."""
    if task.strategy == "v6.16" and task.replication == 1:
        raise RuntimeError("modelled failure\nsecond line")
    return normal_runner(task)


def failing_at_x0_runner(task: RunTask) -> dict[str, Any]:
    """Like `failing_runner`, but only at the design point x = 0."""
    if dict(task.point).get("x") == 0:
        return failing_runner(task)
    return normal_runner(task)


def violating_runner(task: RunTask) -> dict[str, Any]:
    """Reports one violation per run under `eager`."""
    out = normal_runner(task)
    if task.strategy == "eager":
        out["violations"] = [{"invariant": "host_state_leak", "t_ns": 5, "cpu": 0,
                              "vcpu": "td0.vcpu0", "detail": "stale MSR"}]
    return out


class CountingRunner:
    """Counts calls and can stop the study (like a kill) after `stop_after` runs."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_after = stop_after

    def __call__(self, task: RunTask) -> dict[str, Any]:
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((dict(task.point).get("x"), task.strategy, task.replication))
        return normal_runner(task)


def write_study(directory, body: str, name: str = "study.toml"):
    """Write a study file (and the base scenario it names) into `directory`."""
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "base.toml").write_text('[sim]\nduration_us = 100\n')
    path = directory / name
    path.write_text(body)
    return path


BASIC = '''
question = "Does x move exits?"
scenario = "base.toml"
strategies = ["current", "v6.16", "eager"]
metrics = ["exits", "wrmsr.total", "wrmsr.total/exits"]

[factors]
x = [0, 1, 2]

[replications]
count = 4
'''


# Known truths for the coverage of the sequential procedure: a normal and a skewed (gamma)
# mean, and a normal and a skewed paired difference.
GAMMA_MEAN = 100.0      # host_state_reload ~ Gamma(shape 4, scale 25): skewness 1
SKEWED_EFFECT = 0.05    # vcpu_put: eager = (1 + 0.05) x a shared Gamma(2, 50) + own noise
SKEWED_DIFF = SKEWED_EFFECT * 100.0


def skewed_runner(task: RunTask) -> dict[str, Any]:
    """normal_runner's metrics plus a skewed mean (host_state_reload) and a skewed paired
    difference (vcpu_put: eager - current has mean SKEWED_DIFF)."""
    out = normal_runner(task)
    point = dict(task.point)
    guest = _rng("guest-skewed", task.seed, sorted(point.items()))
    own = _rng("own-skewed", task.seed, task.strategy, sorted(point.items()))
    shared = guest.gammavariate(2.0, 50.0)
    factor = 1.0 + (SKEWED_EFFECT if task.strategy == "eager" else 0.0)
    out["metrics"]["host_state_reload"] = guest.gammavariate(4.0, GAMMA_MEAN / 4.0)
    out["metrics"]["vcpu_put"] = shared * factor + own.gauss(0.0, 3.0)
    return out


def layout_runner(task: RunTask) -> dict[str, Any]:
    """A register-layout stand-in: `copy` adds exactly 26 GPR copies per exit to in_place's
    2.5, and its KVM time per exit grows by 26 ns (plus the run's own noise)."""
    point = dict(task.point)
    guest = _rng("guest", task.seed)
    own = _rng("own", task.seed, sorted(point.items()))
    exits = round(guest.gauss(1000.0, 30.0))
    copy = point.get("kvm.regs_layout") == "copy"
    copies = exits * (2.5 + (26 if copy else 0))
    kvm_ns = exits * (2300.0 + (26 if copy else 0)) + own.gauss(0.0, 500.0)
    return {"metrics": {"exits": exits, "regs.copies": copies, "cpu.4.ns.kvm": kvm_ns}}


def crossing_runner(task: RunTask) -> dict[str, Any]:
    """normal_runner, but eager's WRMSR offset falls with x: +8 at x = 0, 0 at 1, -8 at 2."""
    out = normal_runner(task)
    if task.strategy == "eager":
        x = float(dict(task.point).get("x", 0))
        out["metrics"]["wrmsr.total"] += -8.0 * x
    return out


def cost_runner(task: RunTask) -> dict[str, Any]:
    """KVM time that depends on the sampled costs: every exit costs exit_handling_ns and
    every WRMSR wrmsr_ns; eager writes 1,000 more MSRs per run than current.  vmm_io_ns
    changes nothing.  The resolved 'scenario' is the overrides (see `resolve`)."""
    from tdsim.study.costs import cost_ranges

    ov = task.scenario["overrides"]
    ranges = cost_ranges()
    wrmsr_ns = ov.get("costs.wrmsr_ns", ranges["wrmsr_ns"].default)
    exit_ns = ov.get("costs.exit_handling_ns", ranges["exit_handling_ns"].default)
    guest = _rng("guest", task.seed)
    own = _rng("own", task.seed, task.strategy, ov.get("costs.vmm_io_ns"))
    exits = round(guest.gauss(1000.0, 30.0))
    wrmsrs = 4 * exits + (1000 if task.strategy == "eager" else 0)
    kvm_ns = exits * exit_ns + wrmsrs * wrmsr_ns + own.gauss(0.0, 200.0)
    return {"metrics": {"exits": exits, "wrmsr.total": wrmsrs, "cpu.0.ns.kvm": kvm_ns}}


def warming_runner(task: RunTask) -> dict[str, Any]:
    """normal_runner plus a per-window series of exits: 60 windows, the first 12 inflated by
    a start-up transient that decays, then steady around 20 per window."""
    out = normal_runner(task)
    if task.window_ns:
        rng = _rng("series", task.seed, task.strategy)
        exits = [20.0 + (40.0 * (12 - k) / 12 if k < 12 else 0.0) + rng.gauss(0.0, 1.0)
                 for k in range(60)]
        out["series"] = {"exits": exits, "exits.reason.CPUID": [1.0] * 60}
    return out
