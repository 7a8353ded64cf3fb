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
