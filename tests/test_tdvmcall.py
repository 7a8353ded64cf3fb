"""The register ABI and its layouts: regs[] copies counted and charged, outcomes unchanged."""

from tdsim.scenario import load_scenario, scenario_from_dict
from tdsim.sim import Simulation, run

PROGRAM = [{"op": "rdmsr", "index": 0x1A0},
           {"op": "wrmsr", "index": 0x6E0, "value": 7},
           {"op": "tdvmcall", "r10": 1, "r11": 2, "r12": 3},
           {"op": "cpuid", "leaf": 1}]


def scenario(layout, program=PROGRAM, regs_copy_ns=0):
    return scenario_from_dict({
        "sim": {"duration_us": 1000, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"regs_layout": layout},
        "costs": {"regs_copy_ns": regs_copy_ns},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"program": program}}],
    }, name="<layout>")


def test_layouts_give_the_guest_the_same_registers():
    """in_place and copy differ in cost only: every call returns the same registers."""
    a = run(scenario("in_place")).details["calls"]["td0.vcpu0"]
    b = run(scenario("copy")).details["calls"]["td0.vcpu0"]
    assert [c["regs_out"] for c in a] == [c["regs_out"] for c in b]
    assert len(a) == 4


def test_in_place_counts_only_the_emulation_moves():
    """in_place: RDMSR 2 (RCX, R11), WRMSR 3 (RCX, RAX, RDX), hypercall 6 (5 in, R10 out),
    CPUID 0: 11 copies, 88 bytes."""
    m = run(scenario("in_place")).metrics
    assert (m["regs.copies"], m["regs.bytes"]) == (11, 88)


def test_copy_layout_adds_26_copies_per_td_exit():
    """copy: 13 registers each way per TDH.VP.ENTER; 5 exits (4 calls + the final HLT)."""
    m = run(scenario("copy")).metrics
    assert m["exits"] == 5
    assert (m["regs.copies"], m["regs.bytes"]) == (11 + 26 * 5, 8 * (11 + 26 * 5))


def test_copy_before_entry_delays_the_td_entry_by_its_cost():
    """With 10 ns per copy, the first exit comes 13 x 10 ns later in the copy layout."""
    a = run(scenario("in_place", regs_copy_ns=10)).details["calls"]["td0.vcpu0"]
    b = run(scenario("copy", regs_copy_ns=10)).details["calls"]["td0.vcpu0"]
    assert b[0]["t_ns"] - a[0]["t_ns"] == 130


def test_copy_layout_keeps_regs_separate_and_filled_after_an_exit():
    """copy: regs[] is its own array holding the last exit's registers (the parked HLT)."""
    sim = Simulation(scenario("copy"))
    sim.run()
    vcpu = sim.vcpus[0]
    assert vcpu.gprs is not vcpu.vp_enter_args
    assert (vcpu.gprs.r11, vcpu.gprs.r12) == (12, 1)


def test_in_place_layout_uses_vp_enter_args_as_regs():
    """in_place: vp_enter_args is regs[] itself."""
    sim = Simulation(scenario("in_place"))
    assert sim.vcpus[0].gprs is sim.vcpus[0].vp_enter_args


def test_statistical_workload_counts_do_not_depend_on_the_layout():
    """At zero copy cost the baseline runs the same TDVMCALLs under both layouts."""
    a = run(load_scenario("scenarios/baseline.toml", overrides=["sim.duration_us=3000"]))
    b = run(load_scenario("scenarios/baseline.toml",
                          overrides=["sim.duration_us=3000", "kvm.regs_layout=copy"]))
    keys = [k for k in a.metrics if k.startswith("tdvmcall.")]
    assert keys and all(a.metrics[k] == b.metrics[k] for k in keys)
    assert b.metrics["regs.copies"] == a.metrics["regs.copies"] + 26 * b.metrics["exits"]
