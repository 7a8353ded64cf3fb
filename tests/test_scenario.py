"""Scenario loading: defaults, validation errors (one line, file and key path), overrides."""

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tdsim.scenario import (
    ScenarioError,
    describe_schema,
    load_scenario,
    load_scenario_text,
    parse_value,
    scenario_from_dict,
)
from tdsim.schema import SCHEMA, TDVMCALL_KINDS, Table


def error_of(text="", overrides=None):
    """The ScenarioError text that loading `text` as ``s.toml`` raises."""
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, name="s.toml", overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- resolution -------------------------------------------------------------------------------


def test_empty_scenario_resolves_every_default():
    """An empty file gives every table, with the schema's defaults and one default VM."""
    data = load_scenario_text("").data
    assert set(data) == set(SCHEMA.keys)
    assert data["host"]["cpus"] == SCHEMA.keys["host"].keys["cpus"].default
    assert data["costs"]["wrmsr_ns"] == SCHEMA.keys["costs"].keys["wrmsr_ns"].default
    [vm] = data["vm"]
    assert (vm["name"], vm["vcpus"], vm["pin"]) == ("td0", 1, None)


def test_vm_names_default_to_their_index():
    """Unnamed VMs are called td<index>, counting named ones too."""
    data = load_scenario_text('[[vm]]\nname = "web"\n[[vm]]\n').data
    assert [vm["name"] for vm in data["vm"]] == ["web", "td1"]


def test_given_mix_lists_every_kind_with_unnamed_at_zero():
    """A given mix has all TDVMCALL kinds; the ones not named weigh 0 (no default merged in)."""
    mix = load_scenario_text("[[vm]]\nworkload.mix = {io = 2}\n").data["vm"][0]["workload"]["mix"]
    assert mix == {kind: (2 if kind == "io" else 0.0) for kind in TDVMCALL_KINDS}


def test_numbers_keep_their_toml_type():
    """A NUM key keeps an integer as an integer (the model converts)."""
    data = load_scenario_text("[sim]\nduration_us = 500\n").data
    assert data["sim"]["duration_us"] == 500
    assert isinstance(data["sim"]["duration_us"], int)


def test_resolved_data_is_json_serialisable():
    """The resolved data goes into the result document, so it survives a JSON round trip."""
    data = load_scenario_text("[[vm]]\nvcpus = 2\npin = [0, 1]\n").data
    assert json.loads(json.dumps(data)) == data


LAZY = "from tdsim.strategies import Current\n\nclass Lazy(Current):\n    name = 'lazy'\n"


def test_relative_strategy_file_resolves_against_scenario_directory(tmp_path):
    """A relative path/file.py strategy is made absolute from the scenario file's directory."""
    (tmp_path / "strat").mkdir()
    (tmp_path / "strat" / "mine.py").write_text(LAZY)
    path = tmp_path / "s.toml"
    path.write_text('[kvm]\nhost_state = "strat/mine.py:Lazy"\n'
                    'compare = ["current", "strat/mine.py:Lazy"]\n')
    data = load_scenario(path).data
    assert data["kvm"]["host_state"] == f"{tmp_path / 'strat' / 'mine.py'}:Lazy"
    assert data["kvm"]["compare"][1] == f"{tmp_path / 'strat' / 'mine.py'}:Lazy"


def test_module_strategy_is_kept_as_given(tmp_path, monkeypatch):
    """A package.module:Class strategy is not a path and is left alone."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "lazy.py").write_text(LAZY)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_scenario_text('[kvm]\nhost_state = "mypkg.lazy:Lazy"\n').data
    assert data["kvm"]["host_state"] == "mypkg.lazy:Lazy"


@pytest.mark.parametrize(("source", "spec", "message"), [
    (None, "nowhere.py:S", "strategy file {dir}/nowhere.py does not exist"),
    ("1 / 0\n", "s.py:S", "strategy file {dir}/s.py raised ZeroDivisionError on import: "
                          "division by zero (line 1)"),
    ("def broken(:\n", "s.py:S", "strategy file {dir}/s.py raised SyntaxError on import: "
                                 "invalid syntax (line 1)"),
    (LAZY, "s.py:Lazzy", "no class 'Lazzy' in {dir}/s.py (did you mean 'Lazy'?)"),
    ("class S:\n    pass\n", "s.py:S", "'S' in {dir}/s.py is a class that does not subclass "
                                        "tdsim.strategies.HostStateStrategy"),
    ("S = 3\n", "s.py:S", "'S' in {dir}/s.py is a int that does not subclass "
                          "tdsim.strategies.HostStateStrategy"),
    (LAZY + "    def __init__(self):\n        raise RuntimeError('no')\n", "s.py:Lazy",
     "Lazy() raised RuntimeError: no (line 6)"),
    (None, "no_such_pkg_tdsim.mod:S", "no module named 'no_such_pkg_tdsim' (is it on the "
                                      "Python path?)"),
])
def test_unusable_strategy_is_bad_input_at_load_time(tmp_path, source, spec, message):
    """A strategy that cannot be imported, is missing, or is not a HostStateStrategy is a
    one-line error under kvm.host_state when the scenario is loaded (nothing runs)."""
    if source is not None:
        (tmp_path / "s.py").write_text(source)
    path = tmp_path / "x.toml"
    path.write_text(f'[kvm]\nhost_state = "{spec}"\n')
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value) == f"{path}: kvm.host_state: " + message.format(dir=tmp_path)


def test_unusable_compared_strategy_names_its_index():
    """A kvm.compare entry is checked like kvm.host_state, under its own index."""
    assert error_of('[kvm]\ncompare = ["current", "nosuch_mod_tdsim:X"]\n') == (
        "s.toml: kvm.compare[1]: no module named 'nosuch_mod_tdsim' (is it on the Python "
        "path?)")
    assert error_of('[kvm]\ncompare = ["eager", "current", "eager"]\n') == (
        "s.toml: kvm.compare[2]: 'eager' is listed twice (also kvm.compare[0])")


def test_warmup_must_end_before_the_run():
    """A warm-up as long as the run leaves nothing to measure: an error, not empty metrics."""
    assert error_of("[sim]\nduration_us = 100\nwarmup_us = 100\n") == (
        "s.toml: sim.warmup_us: must be less than sim.duration_us = 100 (got 100): the "
        "warm-up would leave nothing to measure")


def test_unknown_invariant_or_metric_in_expect_is_an_error():
    """A misspelt invariant or metric in [expect] is an error with a suggestion, not a
    silently met expectation."""
    assert error_of('[expect]\nviolations_must_not = ["host_state_leek"]\n') == (
        "s.toml: expect.violations_must_not[0]: unknown invariant 'host_state_leek' (did "
        "you mean 'host_state_leak'?)")
    assert "expect.strategy.eager.violations_must[0]: unknown invariant 'nope'" in error_of(
        '[expect.strategy.eager]\nviolations_must = ["nope"]\n')
    assert error_of("[expect.metrics]\nexit = 0\n").startswith(
        "s.toml: expect.metrics.exit: unknown metric 'exit'")


def test_string_key_takes_the_text_of_a_set_value():
    """--set on a string key keeps the text, even when it reads as a number or boolean."""
    data = load_scenario_text("", overrides=["vm.0.name=5", "vm.1.name=true",
                                             'vm.2.name="quoted"']).data
    assert [vm["name"] for vm in data["vm"]] == ["5", "true", "quoted"]
    assert load_scenario_text("", overrides=["host.cpus=5"]).data["host"]["cpus"] == 5


# --- validation errors ------------------------------------------------------------------------


def test_unknown_key_names_path_and_suggests():
    """A misspelt key is an error naming its path and the closest known key."""
    assert error_of("[[vm]]\nvcpu = 2\n") == (
        "s.toml: vm[0].vcpu: unknown key 'vcpu' (did you mean 'vcpus'?)")


def test_unknown_top_level_table_is_an_error():
    """An unknown table is rejected, not ignored."""
    assert error_of("[hots]\ncpus = 2\n").startswith("s.toml: hots: unknown key 'hots'")


def test_unknown_mix_kind_is_an_error():
    """A mix key outside TDVMCALL_KINDS is rejected with a suggestion."""
    assert error_of("[[vm]]\nworkload.mix = {cpuidd = 1}\n") == (
        "s.toml: vm[0].workload.mix.cpuidd: unknown key 'cpuidd' (did you mean 'cpuid'?)")


def test_zero_vcpus_is_an_error():
    """vcpus = 0 fails the schema's check at vm[0].vcpus."""
    assert error_of("[[vm]]\nvcpus = 0\n") == "s.toml: vm[0].vcpus: must be > 0 (got 0)"


def test_bool_is_not_an_integer():
    """TOML true where an integer is expected is a type error, not 1."""
    assert error_of("[host]\ncpus = true\n") == (
        "s.toml: host.cpus: expected an integer, got a boolean (true)")


def test_string_is_not_a_number():
    """A quoted number is a type error."""
    assert error_of('[sim]\nduration_us = "10"\n') == (
        's.toml: sim.duration_us: expected a number, got a string ("10")')


def test_choice_outside_choices_is_an_error():
    """A value not in the key's choices is rejected with the choices listed."""
    assert error_of('[host]\ntask_dist = "gauss"\n') == (
        's.toml: host.task_dist: "gauss" is not one of "fixed", "exp"')


def test_pin_to_missing_cpu_is_an_error():
    """A pin entry naming a CPU the host does not have is an error at that entry."""
    assert error_of("[host]\ncpus = 2\n[[vm]]\nvcpus = 2\npin = [0, 2]\n") == (
        "s.toml: vm[0].pin[1]: CPU 2 does not exist: host.cpus = 2 (valid 0..1)")


def test_pin_length_must_match_vcpus():
    """A pin list needs one entry per vCPU."""
    assert error_of("[[vm]]\nvcpus = 2\npin = [0]\n") == (
        "s.toml: vm[0].pin: has 1 entry but vcpus = 2: give one host CPU per vCPU")


def test_hlt_without_wake_source_is_an_error():
    """A VM that halts but has no guest timer could never be woken."""
    assert error_of("[[vm]]\n[[vm]]\nworkload.mix = {hlt = 1, cpuid = 1}\n") == (
        "s.toml: vm[1].workload.mix.hlt: a halted vCPU could never be woken: "
        "set vm[1].workload.timer_hz > 0")


def test_hlt_with_timer_is_accepted():
    """The same halting VM is fine once its timer runs."""
    text = "[[vm]]\nworkload = {timer_hz = 1000, mix = {hlt = 1}}\n"
    assert load_scenario_text(text).data["vm"][0]["workload"]["mix"]["hlt"] == 1


def test_mix_needs_a_positive_weight():
    """A mix of all zeros gives the guest nothing to do."""
    assert error_of("[[vm]]\nworkload.mix = {cpuid = 0}\n").startswith(
        "s.toml: vm[0].workload.mix: all weights are 0")


def test_duplicate_vm_names_are_an_error():
    """Two VMs cannot share a name, including a default one."""
    assert error_of('[[vm]]\n[[vm]]\nname = "td0"\n') == (
        "s.toml: vm[1].name: duplicate VM name 'td0' (also vm[0])")


def test_empty_vm_array_is_an_error():
    """vm = [] falls below the array's minimum length."""
    assert error_of("vm = []\n") == "s.toml: vm: needs at least 1 item(s), got 0"


def test_bad_strategy_syntax_is_an_error():
    """A user strategy that is neither module:Class nor file.py:Class is rejected."""
    assert error_of('[kvm]\nhost_state = "my strat:X"\n').startswith(
        "s.toml: kvm.host_state: bad strategy 'my strat:X'")


def test_toml_syntax_error_gives_line():
    """Broken TOML is reported at <toml> with the line and column."""
    assert error_of("[host]\ncpus = \n") == (
        "s.toml: <toml>: Invalid value (at line 2, column 8)")


def test_missing_file_is_a_scenario_error(tmp_path):
    """A file that cannot be read is a ScenarioError, not a traceback."""
    with pytest.raises(ScenarioError, match=r"nope\.toml: <file>: cannot read"):
        load_scenario(tmp_path / "nope.toml")


# --- overrides --------------------------------------------------------------------------------


def test_override_scalars():
    """host.cpus=8 and vm.0.vcpus=4 set those keys, parsed as TOML integers."""
    data = load_scenario_text("", overrides=["host.cpus=8", "vm.0.vcpus=4"]).data
    assert (data["host"]["cpus"], data["vm"][0]["vcpus"]) == (8, 4)


def test_override_value_falls_back_to_string():
    """v6.16 is not a TOML literal, so it is taken as the string "v6.16"."""
    data = load_scenario_text("", overrides=["kvm.host_state=v6.16"]).data
    assert data["kvm"]["host_state"] == "v6.16"


def test_override_inline_table_replaces_mix():
    """A TOML inline table replaces the whole mix."""
    data = load_scenario_text("", overrides=["vm.0.workload.mix={io=1.0}"]).data
    assert data["vm"][0]["workload"]["mix"]["io"] == 1.0
    assert data["vm"][0]["workload"]["mix"]["cpuid"] == 0.0


def test_override_one_past_the_end_appends_a_vm():
    """vm.1.vcpus=2 adds a second VM with that vCPU count."""
    data = load_scenario_text("[[vm]]\nvcpus = 3\n", overrides=["vm.1.vcpus=2"]).data
    assert [(vm["name"], vm["vcpus"]) for vm in data["vm"]] == [("td0", 3), ("td1", 2)]


def test_override_index_out_of_range_is_an_error():
    """An index beyond one past the end is an error naming the array."""
    assert error_of(overrides=["vm.2.vcpus=2"]) == (
        "s.toml: vm[2]: index 2 out of range: vm has 1 item(s); use vm.1 to add one")


def test_override_errors_name_the_key_path():
    """A bad override value is validated like file content, at its key path."""
    assert error_of(overrides=["vm.0.vcpus=true"]) == (
        "s.toml: vm[0].vcpus: expected an integer, got a boolean (true)")


def test_override_without_equals_names_set():
    """A --set item without '=' is an error naming --set."""
    assert error_of(overrides=["host.cpus"]) == (
        "s.toml: --set: expected KEY=VALUE, got 'host.cpus'")


def test_override_dict_values_are_used_as_given():
    """Mapping overrides carry typed values and are not parsed."""
    data = load_scenario_text("", overrides={"sim.seed": 7, "vm.0.name": "8"}).data
    assert (data["sim"]["seed"], data["vm"][0]["name"]) == (7, "8")


def test_parse_value_evaluates_nothing():
    """A Python expression is just a string to the override parser."""
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"


def test_override_strategy_path_is_relative_to_cwd(tmp_path, monkeypatch):
    """A strategy file given with --set is resolved from the current directory."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "x.py").write_text(LAZY)
    monkeypatch.chdir(tmp_path / "cwd")
    path = tmp_path / "s.toml"
    path.write_text("")
    data = load_scenario(path, overrides=["kvm.host_state=x.py:Lazy"]).data
    assert data["kvm"]["host_state"] == f"{os.path.join(os.getcwd(), 'x.py')}:Lazy"


def test_overrides_do_not_modify_the_input_dict():
    """scenario_from_dict copies its input before applying overrides."""
    raw = {"host": {"cpus": 2}}
    scenario_from_dict(raw, overrides={"host.cpus": 8})
    assert raw == {"host": {"cpus": 2}}


@given(cpus=st.integers(1, 8), vcpus=st.integers(1, 4), io=st.floats(0.1, 10),
       seed=st.integers(0, 2**32))
def test_resolving_resolved_data_is_identity(cpus, vcpus, io, seed):
    """Feeding resolved data back through scenario_from_dict changes nothing."""
    first = load_scenario_text("", overrides={
        "host.cpus": cpus, "vm.0.vcpus": vcpus, "vm.0.workload.mix.io": io, "sim.seed": seed,
        "vm.1.pin": [cpus - 1]})
    assert scenario_from_dict(first.data).data == first.data


# --- reference --------------------------------------------------------------------------------


def test_describe_schema_lists_every_key():
    """The Markdown reference names every key of every table in the schema."""
    text = describe_schema()

    def keys(table):
        for name, spec in table.keys.items():
            yield name
            inner = getattr(spec, "item", spec)
            if isinstance(inner, Table):
                yield from keys(inner)
            elif getattr(spec, "allowed", None) is not None:  # None: free-form names
                yield from spec.allowed

    missing = [k for k in keys(SCHEMA) if not any(
        form in text for form in (f"`{k}`", f"[{k}]", f".{k}]"))]
    assert missing == []
