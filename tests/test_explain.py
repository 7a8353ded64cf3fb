"""Explaining violations: each recorded violation carries its cause and the chain of events
from the cause to its detection."""

import json
import textwrap
from pathlib import Path

from tdsim import arch
from tdsim.cli import main
from tdsim.explain import MAX_HEAD, MAX_TAIL, explain, explanation
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation, run

NO_KGS_RESTORE = textwrap.dedent('''
    from tdsim.strategies import Current

    class NoKgsRestore(Current):
        """Wrong on purpose: never writes the host KERNEL_GS_BASE back at put."""
        name = "no-kgs-restore"
        def prepare_switch_to_host(self, vcpu, cpu):
            pass
''')


def leaky(tmp_path):
    path = tmp_path / "wrong.py"
    path.write_text(NO_KGS_RESTORE)
    return {
        "sim": {"duration_us": 100, "seed": 4},
        "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"host_state": f"{path}:NoKgsRestore"},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"compute_us": 5, "mix": {"io": 1}}}],
    }


def test_violation_carries_its_cause_and_the_put_that_missed_the_restore(tmp_path):
    """The first violation's cause is the TD exit that left KERNEL_GS_BASE = 0; its chain
    runs from there, on its CPU, to the vcpu_put that did not restore it and the violation."""
    scenario = scenario_from_dict(leaky(tmp_path))
    result = run(scenario)
    explain(scenario, result)
    v = result.violations[0]
    assert v["invariant"] == "kernel_gs_base_not_restored"
    assert v["msr"] == "MSR_KERNEL_GS_BASE"
    assert v["cause"]["what"] == ("the TD exit (TDH.VP.ENTER's return) left "
                                  "MSR_KERNEL_GS_BASE=0x0, the TDX module's value")
    events = v["events"]
    assert events[0] == v["cause"]["event"]
    assert " seamcall cpu1 td0.vcpu0 leaf=TDH_VP_ENTER status=TDX_SUCCESS" in events[0]
    assert all(" cpu1 " in line for line in events)
    assert events[-2] == f"{v['t_ns']} vcpu_put cpu1 td0.vcpu0 cause=kvm_run_return"
    assert events[-1].startswith(f"{v['t_ns']} violation cpu1 td0.vcpu0 "
                                 "invariant=kernel_gs_base_not_restored")


def test_clean_run_is_not_repeated(monkeypatch):
    """Without violations explain() does not run the model again."""
    scenario = scenario_from_dict({"sim": {"duration_us": 50}})
    result = run(scenario)
    monkeypatch.setattr("tdsim.sim.run", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    explain(scenario, result)
    assert result.violations == []


def leaky_toml(tmp_path):
    """The `leaky` scenario as a file."""
    path = tmp_path / "leaky.toml"
    path.write_text(textwrap.dedent(f"""
        [sim]
        duration_us = 100
        seed = 4
        [host]
        cpus = 2
        tick_hz = 0
        [kvm]
        host_state = "{leaky(tmp_path)['kvm']['host_state']}"
        [[vm]]
        pin = [1]
        [vm.workload]
        compute_us = 5
        mix = {{ io = 1 }}
    """))
    return path


def test_summary_and_json_show_the_events(tmp_path, capsys):
    """`tdsim run` prints the leading events and writes them into the JSON result."""
    out_json = tmp_path / "r.json"
    assert main(["run", str(leaky_toml(tmp_path)), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "violation 1 (kernel_gs_base_not_restored at " in out
    assert "cause: " in out
    doc = json.loads(out_json.read_text())
    assert doc["violations"][0]["events"][-1].split()[1] == "violation"


def test_filtered_log_still_explains_in_full(tmp_path):
    """With `--log-kind kvm_exit` the log holds only exits, but violations still carry every
    kind of event that led to them."""
    log, res = tmp_path / "log.jsonl", tmp_path / "r.json"
    assert main(["run", str(leaky_toml(tmp_path)), "--log", str(log), "--log-kind", "kvm_exit",
                 "--json", str(res)]) == 1
    assert {json.loads(x)["event"] for x in log.read_text().splitlines()} == {"kvm_exit"}
    events = json.loads(res.read_text())["violations"][0]["events"]
    assert " vcpu_put " in events[-2]
    assert " seamcall " in events[0]


def refusals_after_an_exit(tracer=None):
    """regress_cpuid_pinned's vCPU under SkipKgsRestoreWhenAborted: its first TD entry runs
    (exit at 16.27 us), SEAMCALLs 2-4 are refused with OPERAND_BUSY (retried at once),
    SEAMCALL 5 with INCONSISTENT_MSR (fatal: KVM_RUN returns, the vCPU is put)."""
    wrong = Path(__file__).with_name("wrong_strategies.py")
    sim = Simulation(scenario_from_dict({
        "sim": {"duration_us": 60, "seed": 1}, "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"host_state": f"{wrong}:SkipKgsRestoreWhenAborted"},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {
            "compute_us": 10, "compute_dist": "fixed", "mix": {"cpuid": 1.0}}}]}), tracer)
    busy = (arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_SEPT, None, "operand_busy_late")
    outcomes = {2: busy, 3: busy, 4: busy,
                5: (arch.TDX_INCONSISTENT_MSR, None, "inconsistent_msr")}
    seamcalls = []

    def outcome(vcpu):
        seamcalls.append(vcpu.env.now)
        return outcomes.get(len(seamcalls), (arch.TDX_SUCCESS, None, None))

    sim.module.vp_enter_outcome = outcome
    return sim.run()


def test_explanation_names_a_cause_several_events_before_the_detection():
    """A TD exit leaves KERNEL_GS_BASE = 0; three refused entries follow, then a fatal one
    ends KVM_RUN, and the put skips the restore (the wrong strategy trusts the last
    return).  The explanation's first line names that TD exit, not the refusals or the put
    in between."""
    result = refusals_after_an_exit()
    explain(None, result, rerun=lambda _scenario, tracer: refusals_after_an_exit(tracer))
    v = next(v for v in result.violations if v["invariant"] == "kernel_gs_base_not_restored")
    lines = explanation(v)
    assert lines[0] == ("cause: 16270 seamcall cpu1 td0.vcpu0 leaf=TDH_VP_ENTER "
                        "status=TDX_SUCCESS -- the TD exit (TDH.VP.ENTER's return) left "
                        "MSR_KERNEL_GS_BASE=0x0, the TDX module's value")
    between = v["events"][1:-1]
    assert sum(" late_abort " in e for e in between) == 4  # 3 x operand_busy, 1 fatal
    assert " vcpu_put " in between[-1]
    assert len(between) >= 3


def test_long_chains_keep_their_ends():
    """A chain longer than MAX_HEAD + MAX_TAIL keeps its first and last events and says how
    many it leaves out; asked for in full, it keeps them all."""
    from tests.test_oracles import shipped

    scenario = shipped("irq_nmi_watchdog")
    result = run(scenario, variants=["abort_withdraws_nmi"])
    rerun = lambda s, tracer: run(s, tracer=tracer, variants=["abort_withdraws_nmi"])  # noqa: E731
    explain(scenario, result, rerun=rerun, full=[1])
    short, whole = result.violations[0], result.violations[1]
    assert len(short["events"]) == MAX_HEAD + MAX_TAIL
    assert short["events_elided"] > 0
    assert "events_elided" not in whole
    assert f"  ... {short['events_elided']} more events ..." in explanation(short)
    assert short["events"][0] == short["cause"]["event"]
    assert " nmi_injected " in short["events"][0]
