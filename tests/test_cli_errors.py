"""Every bad input is one line and exit status 2, with nothing run or written; a bug is loud.

The table runs each bad command in a fresh directory holding a few good and bad files, and
checks: exit status 2, exactly one line on stderr that starts ``tdsim: error:`` and names the
file or option and the key path, no traceback, nothing on stdout, no file created or changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdsim import cli

GOOD = "[sim]\nduration_us = 100\n[[vm]]\nvcpus = 2\n"
LAZY = "from tdsim.strategies import Current\n\nclass Lazy(Current):\n    name = 'lazy'\n"
FILES = {
    "good.toml": GOOD,
    "bad_toml.toml": "[sim\nduration_us = 1\n",
    "unknown_key.toml": "[host]\ncpu = 2\n",
    "wrong_type.toml": '[[vm]]\nvcpus = "two"\n',
    "zero_vcpus.toml": "[[vm]]\nvcpus = 0\n",
    "pin_missing_cpu.toml": "[host]\ncpus = 2\n[[vm]]\nvcpus = 2\npin = [0, 5]\n",
    "pin_length.toml": "[[vm]]\nvcpus = 2\npin = [0]\n",
    "dup_names.toml": '[[vm]]\nname = "a"\n[[vm]]\nname = "a"\n',
    "hlt_no_timer.toml": "[[vm]]\n[vm.workload]\ntimer_hz = 0\nmix = { hlt = 1.0 }\n",
    "mix_zero.toml": "[[vm]]\n[vm.workload]\nmix = { cpuid = 0.0 }\n",
    "warmup.toml": "[sim]\nduration_us = 100\nwarmup_us = 100\n",
    "expect_invariant.toml": '[expect]\nviolations_must = ["host_state_leek"]\n',
    "expect_metric.toml": "[expect.metrics]\nexit = 0\n",
    "nan.toml": "[sim]\nduration_us = nan\n",
    "huge_duration.toml": "[sim]\nduration_us = 1e12\n",
    "huge_cpus.toml": "[host]\ncpus = 99999999999999999999\n",
    "compare_dup.toml": '[kvm]\ncompare = ["current", "current"]\n',
    "strategy_syntax.toml": '[kvm]\nhost_state = "nosuch"\n',
    "strat_missing_file.toml": '[kvm]\nhost_state = "nowhere.py:S"\n',
    "strat_raises.toml": '[kvm]\nhost_state = "raises.py:S"\n',
    "strat_syntax_error.toml": '[kvm]\nhost_state = "syntax.py:S"\n',
    "strat_missing_class.toml": '[kvm]\nhost_state = "lazy.py:Lazzy"\n',
    "strat_not_subclass.toml": '[kvm]\nhost_state = "notsub.py:S"\n',
    "strat_missing_module.toml": '[kvm]\nhost_state = "no_such_module_tdsim:S"\n',
    "strat_ctor_raises.toml": '[kvm]\nhost_state = "ctor.py:S"\n',
    "strat_compare.toml": '[kvm]\ncompare = ["current", "nowhere.py:S"]\n',
    "raises.py": "raise RuntimeError('broken on purpose')\n",
    "syntax.py": "def f(:\n",
    "lazy.py": LAZY,
    "notsub.py": "class S:\n    pass\n",
    "ctor.py": "from tdsim.strategies import Current\n\nclass S(Current):\n"
               "    def __init__(self):\n        raise ValueError('no')\n",
    "not_json.json": "{not json",
    "not_result.json": '{"hello": 1}\n',
    "study_unknown.toml": '[study]\nname = "x"\n',
    "plain.txt": "a file, not a directory\n",
}

# (id, argv, what the error line must name)
CASES = [
    # scenario files
    ("missing-file", ["run", "nope.toml"], ["nope.toml", "<file>"]),
    ("directory", ["run", "."], [".", "<file>"]),
    ("toml-syntax", ["run", "bad_toml.toml"], ["bad_toml.toml", "<toml>"]),
    ("unknown-key", ["run", "unknown_key.toml"], ["unknown_key.toml", "host.cpu", "cpus"]),
    ("wrong-type", ["run", "wrong_type.toml"], ["wrong_type.toml", "vm[0].vcpus"]),
    ("zero-vcpus", ["run", "zero_vcpus.toml"], ["zero_vcpus.toml", "vm[0].vcpus"]),
    ("pin-cpu", ["run", "pin_missing_cpu.toml"], ["pin_missing_cpu.toml", "vm[0].pin[1]"]),
    ("pin-length", ["run", "pin_length.toml"], ["pin_length.toml", "vm[0].pin"]),
    ("dup-vm-names", ["run", "dup_names.toml"], ["dup_names.toml", "vm[1].name"]),
    ("hlt-no-timer", ["run", "hlt_no_timer.toml"], ["vm[0].workload.mix.hlt"]),
    ("mix-zero", ["run", "mix_zero.toml"], ["mix_zero.toml", "vm[0].workload.mix"]),
    ("warmup", ["run", "warmup.toml"], ["warmup.toml", "sim.warmup_us"]),
    ("expect-invariant", ["validate", "expect_invariant.toml"],
     ["expect_invariant.toml", "expect.violations_must[0]", "host_state_leak"]),
    ("expect-metric", ["check", "expect_metric.toml"], ["expect.metrics.exit"]),
    ("nan", ["run", "nan.toml"], ["nan.toml", "sim.duration_us", "finite"]),
    ("too-long", ["run", "huge_duration.toml"], ["huge_duration.toml", "sim.duration_us",
                                                  "--allow-long"]),
    ("too-big", ["run", "huge_cpus.toml"], ["huge_cpus.toml", "host.cpus", "memory"]),
    ("too-long-check", ["check", "huge_duration.toml"], ["sim.duration_us", "--allow-long"]),
    ("compare-dup", ["run", "compare_dup.toml"], ["compare_dup.toml", "kvm.compare[1]"]),
    ("strategy-syntax", ["run", "strategy_syntax.toml"], ["kvm.host_state", "nosuch"]),
    # strategy specs
    ("strat-missing-file", ["run", "strat_missing_file.toml"],
     ["strat_missing_file.toml", "kvm.host_state", "nowhere.py does not exist"]),
    ("strat-raises", ["run", "strat_raises.toml"],
     ["kvm.host_state", "raises.py", "RuntimeError on import: broken on purpose (line 1)"]),
    ("strat-syntax", ["validate", "strat_syntax_error.toml"],
     ["kvm.host_state", "syntax.py", "SyntaxError"]),
    ("strat-missing-class", ["run", "strat_missing_class.toml"],
     ["kvm.host_state", "no class 'Lazzy'", "did you mean 'Lazy'"]),
    ("strat-not-subclass", ["validate", "strat_not_subclass.toml"],
     ["kvm.host_state", "HostStateStrategy"]),
    ("strat-missing-module", ["run", "strat_missing_module.toml"],
     ["kvm.host_state", "no module named 'no_such_module_tdsim'"]),
    ("strat-ctor", ["run", "strat_ctor_raises.toml"], ["kvm.host_state", "S() raised "
                                                                          "ValueError: no"]),
    ("strat-compare", ["run", "strat_compare.toml"], ["kvm.compare[1]", "nowhere.py"]),
    ("strat-by-set", ["run", "good.toml", "--set", "kvm.host_state=raises.py:S"],
     ["good.toml", "kvm.host_state", "RuntimeError"]),
    ("strat-by-compare", ["run", "good.toml", "--compare", "current,lazy.py:Nope"],
     ["good.toml", "kvm.compare[1]", "no class 'Nope'"]),
    # --set values
    ("set-no-equals", ["run", "good.toml", "--set", "host.cpus"], ["good.toml", "--set"]),
    ("set-bad-value", ["run", "good.toml", "--set", "host.cpus=abc"],
     ["good.toml", "host.cpus", "integer"]),
    ("set-index", ["run", "good.toml", "--set", "vm.5.vcpus=2"], ["good.toml", "vm[5]"]),
    ("set-unknown", ["run", "good.toml", "--set", "nosuch.key=1"], ["good.toml", "nosuch"]),
    ("set-negative", ["run", "good.toml", "--set", "sim.duration_us=-1"],
     ["good.toml", "sim.duration_us"]),
    ("set-validate", ["validate", "good.toml", "--set", "vm.0.pin=[9, 9]"],
     ["good.toml", "vm[0].pin[0]"]),
    # options
    ("log-cpu-range", ["run", "good.toml", "--log", "l.jsonl", "--log-cpu", "99"],
     ["good.toml", "--log-cpu", "CPU 99"]),
    ("log-cpu-word", ["run", "good.toml", "--log", "l.jsonl", "--log-cpu", "x"],
     ["good.toml", "--log-cpu"]),
    ("log-vcpu", ["run", "good.toml", "--log", "l.jsonl", "--log-vcpu", "nosuch"],
     ["good.toml", "--log-vcpu", "nosuch"]),
    ("log-kind", ["run", "good.toml", "--log", "l.jsonl", "--log-kind", "nope"],
     ["good.toml", "--log-kind", "nope"]),
    ("filter-without-log", ["run", "good.toml", "--log-cpu", "0"], ["--log-cpu", "--log"]),
    ("compare-empty", ["run", "good.toml", "--compare", ","], ["--compare"]),
    ("quiet-json", ["run", "good.toml", "--quiet", "--format", "json"], ["--quiet"]),
    ("log-stdout-csv", ["run", "good.toml", "--log", "-", "--format", "csv"], ["--log"]),
    ("format-choice", ["run", "good.toml", "--format", "xml"], ["run", "--format"]),
    ("seed-int", ["run", "good.toml", "--seed", "abc"], ["run", "--seed"]),
    ("progress-every", ["run", "good.toml", "--progress-every", "-1"], ["--progress-every"]),
    ("no-command", [], ["COMMAND"]),
    # output paths
    ("json-dir-missing", ["run", "good.toml", "--json", "no/dir/r.json"],
     ["--json", "no/dir/r.json", "does not exist"]),
    ("log-dir-missing", ["run", "good.toml", "--log", "no/l.jsonl"], ["--log", "no/l.jsonl"]),
    ("trace-dir-missing", ["run", "good.toml", "--trace", "no/t.json"],
     ["--trace", "no/t.json"]),
    ("json-is-dir", ["run", "good.toml", "--json", "."], ["--json", "directory"]),
    ("json-is-input", ["run", "good.toml", "--json", "good.toml"], ["--json", "good.toml",
                                                                    "input"]),
    ("same-output", ["run", "good.toml", "--json", "r.json", "--trace", "r.json"],
     ["--trace", "r.json", "--json"]),
    ("parent-is-file", ["run", "good.toml", "--trace", "plain.txt/t.json"],
     ["--trace", "plain.txt/t.json", "not a directory"]),
    ("json-stdout", ["run", "good.toml", "--json", "-"], ["--json", "--format json"]),
    ("log-two-scenarios", ["run", "good.toml", "good.toml", "--log", "l.jsonl"],
     ["--log", "one scenario"]),
    # other commands
    ("diff-not-json", ["diff", "not_json.json", "not_result.json"], ["not_json.json",
                                                                      "<json>"]),
    ("diff-not-result", ["diff", "not_result.json", "not_result.json"],
     ["not_result.json", "<root>", "result document"]),
    ("diff-missing", ["diff", "nope.json", "not_result.json"], ["nope.json", "<file>"]),
    ("init-example", ["init", "new.toml", "--example", "compair"], ["--example", "compair",
                                                                    "compare"]),
    ("init-exists", ["init", "good.toml"], ["good.toml", "--force"]),
    # study files
    ("study-missing", ["study", "nope_study.toml", "--dry-run"], ["nope_study.toml"]),
    ("study-unknown-key", ["study", "study_unknown.toml", "--dry-run"],
     ["study_unknown.toml", "unknown key"]),
    ("study-jobs", ["study", "study_unknown.toml", "--jobs", "0"], ["--jobs"]),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_table_is_long_enough():
    """The issue asks for at least 40 bad inputs."""
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, capsys, argv, names):
    """Exit status 2, one `tdsim: error:` line naming the file or option and key path, no
    traceback, nothing on stdout, no file created or changed."""
    before = snapshot(workdir)
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own errors exit from parse_args
        status = e.code
    out, err = capsys.readouterr()
    assert status == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tdsim: error: ")
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert snapshot(workdir) == before


def test_validate_reports_a_bad_strategy_instead_of_ok(workdir, capsys):
    """`tdsim validate` used to print ok for a strategy that cannot be imported."""
    assert cli.main(["validate", "good.toml", "strat_raises.toml"]) == 2
    out, err = capsys.readouterr()
    assert out == "ok good.toml\n"
    assert "strat_raises.toml: kvm.host_state:" in err


def test_string_value_for_a_name_is_accepted(workdir, capsys):
    """`--set vm.0.name=5` names the VM "5" (a name is a string)."""
    assert cli.main(["run", "good.toml", "--set", "vm.0.name=5", "--format", "json"]) == 0
    assert '"name": "5"' in capsys.readouterr().out


def test_real_entry_point_prints_one_line(workdir):
    """The installed entry point (python -m tdsim), not just main(): one line, status 2."""
    proc = subprocess.run([sys.executable, "-m", "tdsim", "run", "strat_raises.toml"],
                          capture_output=True, text=True, cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "RuntimeError on import" in proc.stderr


def test_missing_optional_module_names_the_extra(workdir):
    """Without the study extra (matplotlib made unimportable), `tdsim study` names the extra to
    install in one line instead of raising ModuleNotFoundError; nothing is written."""
    study = Path(__file__).parents[1] / "studies" / "regs_layout.toml"
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from tdsim.cli import main\n"
            f"sys.exit(main(['study', {str(study)!r}, '--jobs', '1', '--out', 'out']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr == ("tdsim: error: this needs the optional module 'matplotlib': install "
                           "tdsim's 'study' extra (pip install 'tdsim[study]')\n")
    assert not (workdir / "out").exists()


def test_a_bug_in_tdsim_is_loud_with_its_type_and_where_to_report(workdir, capsys,
                                                                   monkeypatch):
    """An unexpected exception inside tdsim prints its traceback, its type and a request to
    report it, and exits 3 (not 1, which means violations)."""
    import tdsim.cli_estimate

    monkeypatch.setattr(tdsim.cli_estimate, "EVENTS_PER_WALL_S", "oops")  # a tdsim bug
    assert cli.main(["run", "good.toml"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert 'cli_estimate.py", line' in err
    assert "tdsim: internal error: TypeError: unsupported operand" in err
    assert "this is a bug in tdsim" in err
    assert "please report it" in err


def test_an_exception_in_a_user_strategy_names_its_file(workdir, capsys):
    """A user strategy that raises while the model runs is named (file and line), not
    reported as a tdsim bug."""
    (workdir / "hook.py").write_text(
        "from tdsim.strategies import Current\n\nclass S(Current):\n"
        "    def prepare_switch_to_guest(self, vcpu, cpu):\n"
        "        raise ZeroDivisionError('in the hook')\n")
    assert cli.main(["run", "good.toml", "--set", "kvm.host_state=hook.py:S"]) == 3
    err = capsys.readouterr().err
    assert f"tdsim: error: user code raised ZeroDivisionError at {workdir / 'hook.py'}:5" in err
    assert "bug in tdsim" not in err


def test_interrupt_outside_a_run_exits_130_without_traceback(workdir, capsys, monkeypatch):
    """Ctrl-C while loading (no simulation to stop yet) exits 130 with one line."""
    import tdsim.cli_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tdsim.cli_run, "load_scenario", interrupted)
    assert cli.main(["run", "good.toml"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "tdsim: interrupted"
    assert "Traceback" not in err


def test_closed_pipe_is_quiet(workdir):
    """`tdsim run ... | head -1` ends quietly when head stops reading."""
    proc = subprocess.run(f"{sys.executable} -m tdsim run good.toml good.toml good.toml "
                          "| head -1", shell=True, capture_output=True, text=True, cwd=workdir,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.startswith("tdsim good.toml")
    assert "Traceback" not in proc.stderr
    assert "BrokenPipe" not in proc.stderr


def test_output_directory_check_for_study_out(tmp_path):
    """`check_output_dir` (for `tdsim study --out`): an existing directory or one that can be
    created is fine; a file, or a path under a file, is one line naming the option."""
    from tdsim.cli_io import check_output_dir
    from tdsim.scenario import ScenarioError

    check_output_dir(tmp_path, "--out")
    check_output_dir(tmp_path / "new" / "deeper", "--out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ScenarioError, match=r"^--out: .*/f: exists and is not a directory$"):
        check_output_dir(tmp_path / "f", "--out")
    with pytest.raises(ScenarioError, match=r"^--out: .*/f/sub: .*/f is not a directory$"):
        check_output_dir(tmp_path / "f" / "sub", "--out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing created
