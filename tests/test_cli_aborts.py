"""`tdsim run --compare` on an abort scenario: late aborts and violations per oracle."""

from pathlib import Path

from tdsim import cli

SCENARIO = Path(__file__).parents[1] / "scenarios" / "aborts_zero_step.toml"


def test_compare_table_lists_aborts_and_oracles(capsys):
    """The comparison shows each late_abort kind and each oracle that fired, per strategy,
    and exits 1 because v6.16 broke an invariant."""
    rc = cli.main(["run", str(SCENARIO), "--set", "sim.duration_us=5000"])
    out = capsys.readouterr().out
    assert rc == 1
    for row in ("late entry aborts", "zero_step", "signal", "uret_cache_mismatch"):
        assert row in out


def test_check_and_run_agree_on_the_findings(tmp_path, capsys):
    """`tdsim run` reports exactly the findings `tdsim check` expects of each strategy: the
    check passes, and fails once a finding is no longer declared."""
    import json

    doc = tmp_path / "r.json"
    assert cli.main(["run", str(SCENARIO), "--json", str(doc), "--quiet"]) == 1
    found = {s: {v["invariant"] for v in r["violations"]}
             for s, r in json.loads(doc.read_text())["comparison"].items()}
    assert found == {"current": set(), "v6.16": {"uret_cache_mismatch"}, "eager": set()}
    assert cli.main(["check", str(SCENARIO)]) == 0
    undeclared = tmp_path / "undeclared.toml"
    text = SCENARIO.read_text()
    undeclared.write_text(text[:text.index('[expect.strategy."v6.16"]')])
    capsys.readouterr()
    assert cli.main(["check", str(undeclared)]) == 1
    assert ("[v6.16] violations.uret_cache_mismatch: 113 recorded but not expected"
            in capsys.readouterr().out)


def test_a_kvm_bug_is_in_the_summary(capsys):
    """A run with a KVM_BUG_ON says so in its headline table, by kernel function, with the
    WARN_ON_ONCE lines dmesg would show (exit_reason_raw: the status whose low bits read
    EXTERNAL_INTERRUPT reaches handle_external_interrupt_irqoff with no valid R9)."""
    cli.main(["run", str(SCENARIO.with_name("exit_reason_raw.toml"))])
    out = capsys.readouterr().out
    assert "KVM_BUG_ON (VM dead): handle_external_interrupt_irqoff" in out
    assert "kernel warnings (dmesg): tdx_handle_exit" in out
