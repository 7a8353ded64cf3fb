"""Host-state strategies: the public interface, user strategies, and invariants with teeth."""

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tdsim.scenario import scenario_from_dict
from tdsim.sim import run
from tdsim.strategies import BUILTIN, HostStateStrategy, load_strategy

NO_KGS_RESTORE = textwrap.dedent('''
    from tdsim import arch
    from tdsim.strategies import Current

    class NoKgsRestore(Current):
        """Wrong on purpose: never writes the host KERNEL_GS_BASE back at put."""
        name = "no-kgs-restore"
        def prepare_switch_to_host(self, vcpu, cpu):
            pass
''')

NO_USER_RETURN = textwrap.dedent('''
    from tdsim.strategies import Current

    class NoUserReturn(Current):
        """Wrong on purpose: the user-return notifier restores nothing."""
        name = "no-user-return"
        def user_return(self, cpu):
            pass
''')


def small(strategy, **wl):
    workload = {"compute_us": 5, "mix": {"cpuid": 1, "io": 1}} | wl
    return scenario_from_dict({
        "sim": {"duration_us": 400, "seed": 4},
        "host": {"cpus": 2, "tick_hz": 0, "tasks": 1, "task_run_us": 50,
                 "task_sleep_us": 50},
        "kvm": {"host_state": strategy},
        "vm": [{"vcpus": 2, "workload": workload}],
    }, name="<small>")


def test_builtin_strategies_subclass_the_public_interface():
    """The shipped strategies are plain HostStateStrategy subclasses, loadable by name."""
    for name, cls in BUILTIN.items():
        assert issubclass(cls, HostStateStrategy)
        assert load_strategy(name).name == name


def test_user_strategy_from_file_without_kgs_restore_is_caught(tmp_path):
    """A user strategy that never restores KERNEL_GS_BASE is caught by the invariants."""
    path = tmp_path / "wrong.py"
    path.write_text(NO_KGS_RESTORE)
    r = run(small(f"{path}:NoKgsRestore"))
    names = {v["invariant"] for v in r.violations}
    assert "kernel_gs_base_not_restored" in names
    assert "host_state_leak" in names
    v = next(v for v in r.violations if v["invariant"] == "kernel_gs_base_not_restored")
    assert v["vcpu"].startswith("td0.vcpu")
    assert v["t_ns"] > 0
    assert "KERNEL_GS_BASE" in v["detail"]


def test_strategy_that_skips_user_return_restore_leaks_host_state(tmp_path):
    """A notifier that restores nothing lets host user code run with the module's MSRs."""
    path = tmp_path / "no_user_return.py"
    path.write_text(NO_USER_RETURN)
    r = run(small(f"{path}:NoUserReturn", mix={"io": 1}))
    assert r.metrics["violations.host_state_leak"] > 0
    assert any("MSR_LSTAR=0x0" in v["detail"] for v in r.violations)


def test_user_strategy_by_module_path(tmp_path, monkeypatch):
    """"package.module:Class" imports a strategy from the Python path."""
    (tmp_path / "my_strategies.py").write_text(NO_KGS_RESTORE)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_strategy("my_strategies:NoKgsRestore").name == "no-kgs-restore"


def test_not_a_strategy_is_refused(tmp_path):
    """A class that does not subclass HostStateStrategy is refused with a clear message."""
    (tmp_path / "bad.py").write_text("class Nope:\n    pass\n")
    with pytest.raises(ValueError, match="HostStateStrategy"):
        load_strategy(f"{tmp_path / 'bad.py'}:Nope")


@given(
    strategy=st.sampled_from(["current", "v6.16", "eager"]),
    cpus=st.integers(1, 3),
    vcpus=st.integers(1, 3),
    tasks=st.integers(0, 2),
    pinned=st.booleans(),
    weights=st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=8, max_size=8),
    tick_hz=st.sampled_from([0, 1000, 4000]),
    seed=st.integers(0, 2**16),
)
def test_shipped_strategies_never_violate_on_small_random_hosts(
        strategy, cpus, vcpus, tasks, pinned, weights, tick_hz, seed):
    """Random small topologies and mixes: the shipped strategies record no violation."""
    kinds = ["cpuid", "rdmsr", "wrmsr", "hypercall", "io", "mmio", "mapgpa", "hlt"]
    mix = dict(zip(kinds, weights, strict=True))
    if not any(mix.values()):
        mix["cpuid"] = 1.0
    scenario = scenario_from_dict({
        "sim": {"duration_us": 300, "seed": seed},
        "host": {"cpus": cpus, "tick_hz": tick_hz, "tasks": tasks, "task_run_us": 40,
                 "task_sleep_us": 60, "timeslice_us": 50},
        "kvm": {"host_state": strategy},
        "vm": [{"vcpus": vcpus, "pin": [i % cpus for i in range(vcpus)] if pinned else None,
                "workload": {"compute_us": 4, "timer_hz": 20000, "mix": mix}}],
    }, name="<hyp>")
    r = run(scenario)
    assert r.violations == []
