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
        "vmm": {"fatal_error": "resume"},
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
    assert keys
    assert all(a.metrics[k] == b.metrics[k] for k in keys)
    assert b.metrics["regs.copies"] == a.metrics["regs.copies"] + 26 * b.metrics["exits"]


def test_layout_scenario_shows_26_more_copies_per_exit_for_copy():
    """scenarios/tdvmcall_regs_layout.toml: in_place ~2-3.5 copies per exit; copy 26 more."""
    per_exit = {}
    for layout in ("in_place", "copy"):
        m = run(load_scenario("scenarios/tdvmcall_regs_layout.toml",
                              overrides=["sim.duration_us=4000",
                                         f"kvm.regs_layout={layout}"])).metrics
        per_exit[layout] = m["regs.copies"] / m["exits"]
        assert m["regs.bytes"] == 8 * m["regs.copies"]
    assert 2.0 < per_exit["in_place"] < 3.5
    assert 2.0 < per_exit["copy"] - 26 < 3.5


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LEAVES = [10, 12, 30, 31, 32, 48, 54, 0x10000, 0x10001, 0x10002, 0x10003, 0x10004, 0x10005]
_ARG = st.sampled_from([0, 1, 2, 3, 4, 8, 31, 32, 0x1A0, 0x3F8, 0x1000, 0x200000,
                        (1 << 47) | 0x100000000, 0x7FFFFFFFF000, 1 << 48, (1 << 64) - 1])
# sizes (R13) stay small so that a MapGPA completes within the run
_SIZE = st.sampled_from([0, 1, 2, 4, 8, 0x1000, 0x1800, 0x200000, 0x600000, (1 << 64) - 1])
_STEP = st.builds(lambda r10, r11, r12, r13, r14, mask: {
    "op": "tdvmcall", "r10": r10, "r11": r11, "r12": r12, "r13": r13, "r14": r14,
    "rcx": mask}, st.sampled_from([0, 0, 0, 1, 12, 77]), st.sampled_from(_LEAVES),
    _ARG, _SIZE, _ARG, st.sampled_from([0xFFCC, 0xFC00, 0x7FCC, 0xFFCD]))


@given(st.lists(_STEP, min_size=1, max_size=6))
def test_random_programs_complete_every_call_alike_in_both_layouts(program):
    """Any call sequence completes each call, with the same registers in either layout."""
    program = [s for s in program if s["r11"] != 12]  # an un-woken HLT would stop the rest
    out = {}
    for layout in ("in_place", "copy"):
        calls = run(scenario(layout, program=program or [{"op": "cpuid"}])).details["calls"]
        out[layout] = [(c["step"], c.get("rax"), c["regs_out"]) for c in calls["td0.vcpu0"]]
    assert out["in_place"] == out["copy"]
    assert len(out["copy"]) == max(1, len(program))
