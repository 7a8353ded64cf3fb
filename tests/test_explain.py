"""Explaining violations: each recorded violation carries the events that led to it."""

import json
import textwrap

from tdsim.cli import main
from tdsim.explain import CONTEXT_EVENTS, explain
from tdsim.scenario import scenario_from_dict
from tdsim.sim import run

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


def test_violation_carries_the_put_that_caused_it(tmp_path):
    """The first violation's events end with the vcpu_put on its CPU, then the violation."""
    scenario = scenario_from_dict(leaky(tmp_path))
    result = run(scenario)
    explain(scenario, result)
    v = result.violations[0]
    assert v["invariant"] == "kernel_gs_base_not_restored"
    events = v["events"]
    assert len(events) == CONTEXT_EVENTS + 1
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
    assert "events leading to violation 1 (kernel_gs_base_not_restored" in out
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
