"""Study files: validation errors name the file and key path; design points expand right."""

from __future__ import annotations

import pytest
from study_fakes import BASIC, write_study

from tdsim.study.spec import StudyError, load_study, replication_seed


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
        (HEAD.replace('["exits"]', '["exits/0"]') + REPS, "metrics[0]", "divides by zero"),
        (HEAD.replace('["exits"]', '["wrmsr.totl"]') + REPS, "metrics[0]",
         "did you mean 'wrmsr.total'?"),
        (HEAD.replace('["exits"]', '["exits", "wrmsr.total/exitz"]') + REPS, "metrics[1]",
         "'exitz' is not a metric tdsim reports"),
        (HEAD + 'strategies = ["current", "eagre"]' + REPS, "strategies[1]",
         "unknown strategy 'eagre'"),
        (HEAD + 'strategies = ["current", "nope.py:Cls"]' + REPS, "strategies[1]",
         "not found"),
        (HEAD + 'ratio = "median"' + REPS, "ratio", "ratio_of_means"),
        (HEAD + 'compare = "x"' + REPS, "compare", "not a factor of this study"),
        (HEAD + 'compare = "strategy"' + REPS, "compare", "lists only one"),
        (HEAD + 'compare = {factor = "x", baseline = 9}\n[factors]\nx = [1, 2]' + REPS,
         "compare.baseline", "not a level"),
        (HEAD + 'compare = "x"\n[factors]\nx = [1]' + REPS, "compare", "one level"),
        (HEAD + "min_effect = 5" + REPS, "min_effect", "below 1"),
        (HEAD + "min_effect = {wrmsr = 0.1}" + REPS, "min_effect.wrmsr",
         "not one of the reported metrics"),
        (HEAD + "min_effect = {exits = {absolute = -1}}" + REPS, "min_effect.exits.absolute",
         ">= 0"),
        (HEAD + "\n[series]\nmetrics = [\"exits\"]\nwindow_us = 0" + REPS,
         "series.window_us", "> 0"),
        (HEAD + "\n[uncertainty]\nsamples = 4\ncosts = [\"wrmsr\"]" + REPS,
         "uncertainty.costs[0]", "not a cost"),
        (HEAD + "\n[uncertainty]\nsamples = 1" + REPS, "uncertainty.samples", ">= 2"),
        (HEAD + '\n[overrides]\n"costs.wrmsr_ns" = 3\n[uncertainty]\nsamples = 2' + REPS,
         "uncertainty", "set twice"),
        (HEAD + "confidence = 1.5" + REPS, "confidence", "between 0 and 1"),
        (HEAD + "warmup_us = -1" + REPS, "warmup_us", ">= 0"),
        (HEAD + 'seed = "one"' + REPS, "seed", "must be an integer"),
        (HEAD, "replications", "missing"),
        (HEAD + "\n[replications]\ncount = 0\n", "replications.count", ">= 1"),
        (HEAD + "\n[replications]\ncount = 2\nmax = 3\n", "replications.max",
         "not allowed with count"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmin = 12\nmax = 11\n",
         "replications.max", "must be >= min"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmin = 5\nmax = 30\n",
         "replications.min", ">= 10"),
        (HEAD + "\n[replications]\ntarget_rel_halfwidth = 0.1\nmax = 19\nmetrics = [\"w\"]\n",
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
    """Replication r runs with one seed, hashed from (study seed, r), whatever the strategy
    or point (common random numbers)."""
    s = study(tmp_path, BASIC.replace("[factors]", 'seed = 40\n[factors]'))
    assert [s.seed_of(r) for r in range(3)] == [replication_seed(40, r) for r in range(3)]
    assert len({s.seed_of(r) for r in range(100)}) == 100
    assert s.baseline == "current"


def test_neighbouring_study_seeds_share_no_replication_seed():
    """Study seeds 1 and 2 (and 2 and 3) draw disjoint replication seeds, not shifted ones."""
    seeds = [{replication_seed(k, r) for r in range(1000)} for k in (1, 2, 3)]
    assert not seeds[0] & seeds[1]
    assert not seeds[1] & seeds[2]


def test_replication_seed_is_a_stable_hash():
    """The seed of (1, 0) is fixed: a change would silently invalidate every stored study."""
    assert replication_seed(1, 0) == 0x7ccde00b425b
    assert replication_seed(1, 0) < 2**48


def test_ratio_metric_is_computed_per_run(tmp_path):
    """'a/b' divides two metrics of one run; 'a/1000' scales by a number."""
    s = study(tmp_path, HEAD.replace('["exits"]', '["wrmsr.total/exits", "wrmsr.total/1000"]')
              + REPS)
    assert s.metric("wrmsr.total/exits").value({"wrmsr.total": 6, "exits": 3}) == 2.0
    assert s.metric("wrmsr.total/1000").value({"wrmsr.total": 500}) == 0.5
    assert s.metric("wrmsr.total/exits").value({"wrmsr.total": 6}) is None


def test_star_segment_sums_the_matching_metrics(tmp_path):
    """'cpu.*.ns.kvm' is the KVM time of all CPUs: the sum of cpu.<i>.ns.kvm."""
    s = study(tmp_path, HEAD.replace('["exits"]', '["cpu.*.ns.kvm/exits"]') + REPS)
    run = {"cpu.0.ns.kvm": 100, "cpu.1.ns.kvm": 50, "cpu.1.ns.guest": 999, "exits": 3}
    assert s.metric("cpu.*.ns.kvm/exits").value(run) == 50.0


def test_compare_a_factor_names_its_baseline_level(tmp_path):
    """`compare = {factor, baseline}` contrasts every level with the named one; the string
    form takes the first level."""
    body = HEAD + 'compare = {factor = "layout", baseline = "copy"}\n' + (
        '[factors]\nlayout = ["in_place", "copy", "packed"]' + REPS)
    s = study(tmp_path, body)
    assert [(c.dimension, c.baseline_level) for c in s.comparisons] == [(0, 1)]
    s = study(tmp_path, body.replace('{factor = "layout", baseline = "copy"}', '"layout"'))
    assert [(c.dimension, c.baseline_level) for c in s.comparisons] == [(0, 0)]


def test_strategies_are_compared_by_default_and_not_when_a_factor_is(tmp_path):
    """Several strategies: compared with the baseline unless `compare` says otherwise."""
    assert [c.dimension for c in study(tmp_path, BASIC).comparisons] == [None]
    s = study(tmp_path, BASIC.replace("[factors]", 'compare = "x"\n[factors]'))
    assert [c.dimension for c in s.comparisons] == [0]


def test_min_effect_per_metric_absolute_or_relative(tmp_path):
    """A table sets a default fraction and per-metric thresholds in the metric's unit."""
    s = study(tmp_path, HEAD.replace('["exits"]', '["exits", "wrmsr.total"]') + (
        'min_effect = {default = 0.05, "wrmsr.total" = {absolute = 2}}' + REPS))
    assert s.min_effect("exits").threshold(200.0) == pytest.approx(10.0)
    assert s.min_effect("wrmsr.total").threshold(200.0) == 2.0


def test_sequential_groups_keep_compared_levels_together(tmp_path):
    """With a compared factor, its levels share one count (their runs stay paired)."""
    s = study(tmp_path, HEAD + 'compare = "a"\n[factors]\na = [1, 2]\nb = [3, 4, 5]' + REPS)
    assert s.sequential_groups() == [[0, 3], [1, 4], [2, 5]]


def test_uncertainty_adds_a_cost_sample_dimension_nominal_first(tmp_path):
    """[uncertainty] samples costs over their plausible ranges: level 0 is the defaults,
    then a Latin hypercube (each range's strata used once)."""
    s = study(tmp_path, HEAD + '\n[uncertainty]\nsamples = 8\n'
              'costs = ["wrmsr_ns", "vmm_io_ns"]' + REPS)
    dim = s.dimensions[s.cost_dimension]
    assert dim.keys == ("costs.wrmsr_ns", "costs.vmm_io_ns")
    assert dim.levels[0] == (35, 3000)
    wrmsr = sorted(lv[0] for lv in dim.levels[1:])
    assert [int((w - 25) / (70 - 25) * 8) for w in wrmsr] == list(range(8))
    assert len(s.points()) == 9


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
