"""The tdsim command line: exit statuses, error lines, validate, schema and run --json."""

import importlib.util
import json
import sys
import types

import pytest

from tdsim import cli

RESULT_KEYS = {"tdsim_version", "scenario", "seed", "metrics", "violations", "perf"}


class FakeResult:
    """Stands in for tdsim.sim.Result with a fixed set of metrics."""

    def __init__(self, scenario, violations=()):
        self.scenario = scenario
        self.seed = scenario.seed
        self.metrics = {
            "exits.reason.TDCALL": 90, "exits.reason.EXTERNAL_INTERRUPT": 10,
            "host_state_reload": 3, "wrmsr.total": 12, "wrmsr.site.vcpu_put": 12,
            "wrmsr.msr.MSR_LSTAR": 3, "tdvmcall.cpuid": 90, "late_abort.kick": 1,
            "cpu.0.ns.guest": 7500, "cpu.0.ns.kvm": 2500, "cpu.1.ns.idle": 10000,
        }
        self.violations = list(violations)
        self.partial = False
        self.perf = {"wall_s": 0.01, "sim_events": 500, "td_exits": 100,
                     "events_per_td_exit": 5.0, "td_exits_per_s": 10000.0}

    def to_dict(self):
        return {"tdsim_version": "0.1.0", "scenario": self.scenario.data, "seed": self.seed,
                "metrics": self.metrics, "violations": self.violations, "perf": self.perf}


@pytest.fixture
def fake_sim(monkeypatch):
    """Replace tdsim.sim with a module whose Simulation.run() and run() record the scenarios
    they run; returns (the module, that list)."""
    calls = []
    module = types.ModuleType("tdsim.sim")

    class Simulation:
        def __init__(self, scenario, tracer=None):
            self.scenario = scenario
            self.duration_ns = int(scenario.data["sim"]["duration_us"] * 1000)

        def run(self, progress=None, chunk_ns=None):
            calls.append(self.scenario)
            return FakeResult(self.scenario, violations=getattr(module, "violations", ()))

        def request_stop(self):
            pass

    def run(scenario, tracer=None):  # tracer: tdsim.explain re-runs traced on violations
        return Simulation(scenario, tracer).run()

    module.Simulation = Simulation
    module.run = run
    monkeypatch.setitem(sys.modules, "tdsim.sim", module)
    return module, calls


@pytest.fixture
def scenario_file(tmp_path):
    """A small valid scenario file."""
    path = tmp_path / "small.toml"
    path.write_text("[sim]\nduration_us = 200\n[[vm]]\nvcpus = 2\n")
    return path


def test_bad_scenario_exits_2_with_one_line_and_runs_nothing(tmp_path, fake_sim, capsys):
    """A scenario error exits 2, prints one line naming file and key, and runs nothing."""
    path = tmp_path / "bad.toml"
    path.write_text("[[vm]]\nvcpus = 0\n")
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"tdsim: error: {path}: vm[0].vcpus: must be > 0 (got 0)\n"
    assert fake_sim[1] == []


def test_bad_set_exits_2(scenario_file, fake_sim, capsys):
    """A malformed --set item is bad input naming --set."""
    assert cli.main(["run", str(scenario_file), "--set", "host.cpus"]) == 2
    assert ": --set: expected KEY=VALUE" in capsys.readouterr().err
    assert fake_sim[1] == []


def test_run_applies_seed_and_set(scenario_file, fake_sim):
    """--seed and --set reach the scenario handed to the model."""
    assert cli.main(["run", str(scenario_file), "--seed", "9", "--set", "host.cpus=8"]) == 0
    [scenario] = fake_sim[1]
    assert (scenario.seed, scenario.data["host"]["cpus"]) == (9, 8)


def test_run_prints_summary_sections(scenario_file, fake_sim, capsys):
    """The summary shows the headline counts and each breakdown present in the metrics."""
    cli.main(["run", str(scenario_file)])
    out = capsys.readouterr().out
    for text in ("TD exits", "host_state_reload", "WRMSRs by site", "MSR_LSTAR",
                 "TDVMCALLs by kind", "EXTERNAL_INTERRUPT", "CPU time by category", "75.0%",
                 "late entry aborts: kick", "no invariant violations"):
        assert text in out


def test_run_with_violations_exits_1_and_still_writes(scenario_file, fake_sim, tmp_path,
                                                      capsys):
    """Recorded violations make the exit status 1; the JSON and summary are still produced."""
    fake_sim[0].violations = [{"invariant": "host_state_leak", "t_ns": 5, "cpu": 0,
                               "vcpu": "td0.vcpu0", "detail": f"leak {i}"} for i in range(25)]
    out = tmp_path / "r.json"
    assert cli.main(["run", str(scenario_file), "--json", str(out)]) == 1
    assert len(json.loads(out.read_text())["violations"]) == 25
    printed = capsys.readouterr().out
    # one instant, CPU, vCPU and invariant: one row, every detail in it
    assert "leak 0; leak 1" in printed
    assert "leak 24" in printed
    assert "Invariant violations: 25 recorded" in printed


def test_run_json_writes_result_document(scenario_file, fake_sim, tmp_path):
    """--json writes the result document with its documented top-level keys."""
    out = tmp_path / "r.json"
    assert cli.main(["run", str(scenario_file), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == RESULT_KEYS
    assert doc["scenario"]["vm"][0]["vcpus"] == 2


@pytest.mark.skipif(importlib.util.find_spec("tdsim.sim") is None,
                    reason="tdsim.sim not written yet")
def test_run_json_with_real_model(scenario_file, tmp_path):
    """The real model's run writes a result document with the documented keys."""
    out = tmp_path / "r.json"
    status = cli.main(["run", str(scenario_file), "--json", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc) == RESULT_KEYS
    assert status == (1 if doc["violations"] else 0)
    assert doc["seed"] == 1


def test_validate_reports_each_file(scenario_file, tmp_path, capsys):
    """validate prints ok for good files, the error line for bad ones, and exits 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[host]\ncpu = 2\n")
    assert cli.main(["validate", str(scenario_file), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == f"ok {scenario_file}\n"
    assert captured.err == (f"tdsim: error: {bad}: host.cpu: unknown key 'cpu' "
                            f"(did you mean 'cpus'?)\n")


def test_validate_all_good_exits_0(scenario_file, capsys):
    """validate exits 0 when every file is valid."""
    assert cli.main(["validate", str(scenario_file)]) == 0


def test_schema_prints_reference(capsys):
    """schema prints the Markdown reference."""
    assert cli.main(["schema"]) == 0
    assert capsys.readouterr().out.startswith("# Scenario reference")


def test_log_level_accepted_after_subcommand(capsys):
    """--log-level works before or after the subcommand."""
    assert cli.main(["--log-level", "debug", "schema"]) == 0
    assert cli.main(["schema", "--log-level", "error"]) == 0


def test_summary_prints_scripted_guest_calls_and_register_copies():
    """A scripted guest's summary shows its calls (status, exit fields) and GPR copies."""
    from tdsim.cli_render import plain
    from tdsim.cli_summary import summary_blocks
    from tdsim.scenario import load_scenario
    from tdsim.sim import run

    text = plain(summary_blocks(run(load_scenario("scenarios/ghci_every_subfunction.toml"))))
    assert "Calls of td0.vcpu0 (scripted guest): 26 recorded" in text
    assert "HYPERCALL nr=0xc" in text
    assert "INVALID_OPERAND" in text
    assert "GPR moves (in_place layout)" in text
