"""The declared metric table (`tdsim.metrics`) covers every metric the model reports."""

from tdsim.metrics import family, label, undeclared
from tests.golden import snapshot


def test_every_snapshot_metric_is_declared():
    """Every metric of every golden run belongs to a declared family."""
    keys = set()
    for case in snapshot.load().values():
        keys |= set(case.get("metrics", ()))
    assert len(keys) > 1000
    assert undeclared(sorted(keys)) == []


def test_a_misspelt_metric_is_undeclared():
    """Typos and unknown values of a closed placeholder are not declared."""
    assert undeclared(["exit", "exits.reason.CPUIDD", "wrmsr.msr.MSR_FOO",
                       "vm.td0.vcpu.0.sept.zaps"]) == [
        "exit", "exits.reason.CPUIDD", "vm.td0.vcpu.0.sept.zaps", "wrmsr.msr.MSR_FOO"]


def test_labels_carry_the_unit():
    """A label names the family, the varying part and the unit."""
    assert label("wrmsr.msr.MSR_STAR") == "WRMSRs by MSR: MSR_STAR [WRMSRs]"
    assert label("vm.td0.vcpu.3.exits") == "td0.vcpu.3: TD / VM exits [exits]"
    assert family("wrmsr.total/run.measured_s") is None
