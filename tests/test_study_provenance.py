"""Rows say which model made them, and --resume does not mix models."""

from __future__ import annotations

import json

import pytest
import study_fakes
from study_fakes import BASIC, CountingRunner, normal_runner, resolve, write_study

import tdsim.study.runner
from tdsim.study.cli import main
from tdsim.study.provenance import ROW_FIELDS, model_sha256, source_digest
from tdsim.study.runner import run_study
from tdsim.study.spec import StudyError, load_study

N_RUNS = 36


def run(study, out, runner=normal_runner, **kw):
    kw.setdefault("write_outputs", False)
    return run_study(study, out, run_one=runner, resolver=resolve, **kw)


def _rewrite_digest(store, digest):
    rows = [json.loads(line) for line in store.read_text().splitlines()]
    for r in rows:
        r["model_sha256"] = digest
    store.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_rows_record_version_model_digest_python_and_simpy(tmp_path):
    """Every row carries the provenance fields, with this model's source digest."""
    result = run(load_study(write_study(tmp_path, BASIC)), tmp_path / "out")
    for r in result.rows:
        assert set(ROW_FIELDS) <= set(r)
        assert r["model_sha256"] == model_sha256()
        assert r["python"].count(".") == 2
        assert r["simpy"][0].isdigit()


def test_digest_covers_the_model_but_not_the_study_package(tmp_path):
    """Editing a model file changes the digest; editing tdsim/study does not."""
    pkg = tmp_path / "tdsim"
    (pkg / "study").mkdir(parents=True)
    (pkg / "sim.py").write_text("x = 1\n")
    (pkg / "study" / "report.py").write_text("y = 1\n")
    before = source_digest(pkg)
    (pkg / "study" / "report.py").write_text("y = 2\n")
    assert source_digest(pkg) == before
    (pkg / "sim.py").write_text("x = 2\n")
    assert source_digest(pkg) != before


def test_resume_refuses_rows_of_another_model(tmp_path):
    """Rows whose model digest differs are not reused: one error naming the store, and
    nothing runs."""
    study = load_study(write_study(tmp_path, BASIC))
    run(study, tmp_path / "out")
    store = tmp_path / "out" / "results.jsonl"
    _rewrite_digest(store, "f" * 64)
    counting = CountingRunner()
    with pytest.raises(StudyError) as info:
        run(study, tmp_path / "out", counting, resume=True)
    text = str(info.value)
    assert text.startswith(f"{store}: {N_RUNS} of {N_RUNS} stored runs were made by another "
                           "model (source digest ffffffffffff")
    assert "--allow-mixed" in text
    assert counting.calls == []


def test_allow_mixed_reuses_them_and_the_report_says_so(tmp_path):
    """--allow-mixed reuses the foreign rows, and the Provenance section marks them."""
    study = load_study(write_study(tmp_path, BASIC))
    run(study, tmp_path / "out")
    _rewrite_digest(tmp_path / "out" / "results.jsonl", "f" * 64)
    counting = CountingRunner()
    result = run(study, tmp_path / "out", counting, resume=True, allow_mixed=True,
                 write_outputs=True, plots=False)
    assert (counting.calls, result.reused, result.foreign_rows) == ([], N_RUNS, N_RUNS)
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Provenance")[1]
    assert "`ffffffffffffffff` (**not this model**)" in section
    assert f"**Mixed models:** {N_RUNS} runs" in section


def test_cli_refusal_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """`tdsim study --resume` over another model's rows: exit 2, one stderr line."""
    monkeypatch.setattr(tdsim.study.runner, "resolve_scenario", study_fakes.resolve)
    monkeypatch.setattr(tdsim.study.runner, "run_model", study_fakes.normal_runner)
    path = write_study(tmp_path, BASIC)
    argv = [str(path), "--jobs", "1", "--out", str(tmp_path / "o"), "--no-plots"]
    assert main(argv) == 0
    capsys.readouterr()
    _rewrite_digest(tmp_path / "o" / "results.jsonl", "0" * 64)
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"tdsim: error: {tmp_path / 'o' / 'results.jsonl'}: ")
    assert main([*argv, "--resume", "--allow-mixed"]) == 0
