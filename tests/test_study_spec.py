"""Study files: validation errors name the file and key path; design points expand right."""

from __future__ import annotations

import pytest
from study_fakes import BASIC, write_study

from tdsim.study.spec import StudyError, load_study


def study(tmp_path, body):
    return load_study(write_study(tmp_path, body))


HEAD = 'question = "q?"\nscenario = "base.toml"\nmetrics = ["exits"]\n'
REPS = "\n[replications]\ncount = 2\n"


@pytest.mark.parametrize(
    ("body", "key_path", "fragment"),
    [
        (HEAD + "colour = 1" + REPS, "colour", "unknown key"),
        ('scenario = "base.toml"\nmetrics = ["exits"]' + REPS, "question", "missing"),
        (HEAD.replace("base.toml", "nope.toml") + REPS, "scenario", "no such file"),
        (HEAD + 'strategies = ["current", "current"]' + REPS, "strategies", "twice"),
        (HEAD + 'strategies = []' + REPS, "strategies", "must not be empty"),
        (HEAD + 'baseline = "eager"' + REPS, "baseline", "not one of the strategies"),
        (HEAD.replace('["exits"]', '["a/b/c"]') + REPS, "metrics[0]", "ratio"),
        (HEAD.replace('["exits"]', '["a/0"]') + REPS, "metrics[0]", "divides by zero"),
        (HEAD + "confidence = 1.5" + REPS, "confidence", "between 0 and 1"),
        (HEAD + "warmup_us = -1" + REPS, "warmup_us", ">= 0"),
        (HEAD + 'seed = "one"' + REPS, "seed", "must be an integer"),
        (HEAD, "replications", "missing"),
        (HEAD + "\n[replications]\ncount = 0\n", "replications.count", ">= 1"),
        (HEAD + "\n[replications]\ncount = 2\nmax = 3\n", "replications.max",
         "not allowed with count"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmin = 5\nmax = 3\n",
         "replications.max", "must be >= min"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmin = 1\nmax = 3\n",
         "replications.min", ">= 2"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmax = 9\nmetrics = [\"w\"]\n",
         "replications.metrics[0]", "not one of the reported metrics"),
        (HEAD + '\n[factors]\n"kvm.host_state" = ["eager"]' + REPS, "factors.kvm.host_state",
         "use `strategies`"),
        (HEAD + '\n[overrides]\n"sim.seed" = 3' + REPS, "overrides.sim.seed", "use `seed`"),
        (HEAD + '\n[factors]\nx = []' + REPS, "factors.x", "at least one level"),
        (HEAD + '\n[factors]\nx = [1, 1]' + REPS, "factors.x", "twice"),
        (HEAD + '\n[factors]\nx = 3' + REPS, "factors.x", "list of levels"),
        (HEAD + '\n[factors]\nx = {start = 0, stop = 1}' + REPS, "factors.x",
         "exactly one of step or num"),
        (HEAD + '\n[factors]\nx = {start = 0, stop = 1, step = -0.5}' + REPS,
         "factors.x.step", "never goes"),
        (HEAD + '\n[factors]\nx = {start = 0, stop = 1, num = 0}' + REPS, "factors.x.num",
         ">= 1"),
        (HEAD + '\n[factors]\nx = {start = 0, num = 2}' + REPS, "factors.x.stop", "missing"),
        (HEAD + '\n[[lockstep]]\na = [1, 2]\nb = [1, 2, 3]' + REPS, "lockstep[0]",
         "equal lengths"),
        (HEAD + '\n[[lockstep]]\na = [1, 2]' + REPS, "lockstep[0]", "at least two keys"),
        (HEAD + '\n[factors]\na = [1]\n[[lockstep]]\na = [1, 2]\nb = [3, 4]' + REPS, "a",
         "set twice"),
        ("question = 'q'\nscenario = = 1", "", "not valid TOML"),
    ],
)
def test_bad_study_gives_one_line_naming_file_and_key(tmp_path, body, key_path, fragment):
    """Each mistake is reported as '<file>: <key path>: <message>' on one line."""
    with pytest.raises(StudyError) as info:
        study(tmp_path, body)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(tmp_path / "study.toml") + ": ")
    assert info.value.key_path == key_path
    assert fragment in text


def test_missing_study_file_is_a_study_error(tmp_path):
    """A study path that does not exist is an input error, not a traceback."""
    with pytest.raises(StudyError, match="no such file"):
        load_study(tmp_path / "absent.toml")


def test_factors_expand_to_the_full_product_first_dimension_slowest(tmp_path):
    """Two factors of 2 and 3 levels give 6 points in row-major order."""
    s = study(tmp_path, HEAD + '\n[factors]\na = [1, 2]\n"b.c" = ["x", "y", "z"]' + REPS)
    assert [dict(p.values) for p in s.points()] == [
        {"a": a, "b.c": b} for a in (1, 2) for b in ("x", "y", "z")
    ]
    assert [p.levels for p in s.points()][:2] == [(0, 0), (0, 1)]


def test_lockstep_lists_vary_together_as_one_dimension(tmp_path):
    """A lockstep group of two 3-long lists times a 2-level factor gives 6 points."""
    s = study(tmp_path, HEAD + '\n[factors]\nn = [1, 2]\n[[lockstep]]\n'
              '"mix.io" = [0.0, 0.5, 1.0]\n"mix.cpuid" = [1.0, 0.5, 0.0]' + REPS)
    assert len(s.dimensions) == 2
    assert s.dimensions[1].keys == ("mix.io", "mix.cpuid")
    assert [dict(p.values) for p in s.points()][:3] == [
        {"n": 1, "mix.io": 0.0, "mix.cpuid": 1.0},
        {"n": 1, "mix.io": 0.5, "mix.cpuid": 0.5},
        {"n": 1, "mix.io": 1.0, "mix.cpuid": 0.0},
    ]


def test_dotted_and_quoted_keys_name_the_same_scenario_key(tmp_path):
    """`vm.0.workload.mix.io = [...]` (TOML dotted) equals the quoted form."""
    a = study(tmp_path, HEAD + '\n[factors]\nvm.0.workload.mix.io = [0.5]' + REPS)
    b = study(tmp_path, HEAD + '\n[factors]\n"vm.0.workload.mix.io" = [0.5]' + REPS)
    assert a.points()[0].values == b.points()[0].values == (("vm.0.workload.mix.io", 0.5),)


@pytest.mark.parametrize(
    ("spec", "levels"),
    [
        ("{start = 0, stop = 1, step = 0.25}", [0.0, 0.25, 0.5, 0.75, 1.0]),
        ("{start = 0, stop = 0.3, step = 0.1}", [0.0, 0.1, 0.2, 0.3]),
        ("{start = 0, stop = 10, step = 4}", [0, 4, 8]),
        ("{start = 8, stop = 0, step = -4}", [8, 4, 0]),
        ("{start = 0, stop = 8, num = 5}", [0, 2, 4, 6, 8]),
        ("{start = 0, stop = 1, num = 3}", [0.0, 0.5, 1.0]),
        ("{start = 2, stop = 9, num = 1}", [2]),
    ],
)
def test_ranges_include_stop_and_give_clean_levels(tmp_path, spec, levels):
    """Step ranges include `stop` when a step lands on it; num ranges are evenly spaced."""
    s = study(tmp_path, HEAD + f"\n[factors]\nx = {spec}" + REPS)
    got = [v for ((_, v),) in (p.values for p in s.points())]
    assert got == levels
    assert [type(v) for v in got] == [type(v) for v in levels]


def test_no_factors_is_one_design_point(tmp_path):
    """A study without factors runs the base scenario as its single point."""
    s = study(tmp_path, HEAD + REPS)
    assert [p.values for p in s.points()] == [()]


def test_replication_seeds_are_shared_by_strategies(tmp_path):
    """Replication r uses seed + r whatever the strategy (common random numbers)."""
    s = study(tmp_path, BASIC.replace("[factors]", 'seed = 40\n[factors]'))
    assert [s.seed_of(r) for r in range(3)] == [40, 41, 42]
    assert s.baseline == "current"


def test_ratio_metric_is_computed_per_run(tmp_path):
    """'a/b' divides two metrics of one run; 'a/1000' scales by a number."""
    s = study(tmp_path, HEAD.replace('["exits"]', '["w/e", "w/1000"]') + REPS)
    assert s.metric("w/e").value({"w": 6, "e": 3}) == 2.0
    assert s.metric("w/1000").value({"w": 500}) == 0.5
    assert s.metric("w/e").value({"w": 6}) is None


def test_lockstep_group_may_name_itself_and_its_levels(tmp_path):
    """`name` and `labels` make a categorical dimension (e.g. one abort kind per level)."""
    s = study(tmp_path, HEAD + '\n[[lockstep]]\nname = "abort"\nlabels = ["kick", "zap"]\n'
              '"f.kick_hz" = [100, 0]\n"f.zap_hz" = [0, 100]' + REPS)
    dim = s.dimensions[0]
    assert (dim.label, dim.numeric, dim.level_label(1)) == ("abort", False, "zap")
    assert dict(s.points()[1].values) == {"f.kick_hz": 0, "f.zap_hz": 100}
    assert s.point_label(s.points()[0]) == "abort=kick"


@pytest.mark.parametrize(
    ("group", "fragment"),
    [
        ('labels = ["a"]\nx = [1, 2]\ny = [3, 4]', "must be 2 non-empty strings"),
        ('labels = ["a", "a"]\nx = [1, 2]\ny = [3, 4]', "twice"),
        ('name = 3\nx = [1, 2]\ny = [3, 4]', "must be a string"),
        ("x = [1, 1]\ny = [3, 3]", "two levels set the same values"),
    ],
)
def test_bad_lockstep_labels_are_errors(tmp_path, group, fragment):
    """Labels must match the levels one to one."""
    with pytest.raises(StudyError, match=fragment):
        study(tmp_path, HEAD + "\n[[lockstep]]\n" + group + REPS)


def test_lockstep_column_may_repeat_a_value(tmp_path):
    """Only whole levels must differ: cpuid stays 1 while io moves."""
    s = study(tmp_path, HEAD + "\n[[lockstep]]\nio = [0, 1, 2]\ncpuid = [1, 1, 0]" + REPS)
    assert len(s.points()) == 3
