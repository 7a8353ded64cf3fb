"""KVM hypercalls from a TD (R10 != 0) against ____kvm_emulate_hypercall: guest_pv_has is
true for every PV feature unless KVM_CAP_ENFORCE_PV_FEATURE_CPUID is enabled, and then the
KVM CPUID leaf's bits decide."""

import pytest

from tdsim.sim import run
from tests.scripted import call, neg, scenario

KICK_CPU, CLOCK_PAIRING, SEND_IPI, SCHED_YIELD, MAP_GPA_RANGE = 5, 9, 10, 11, 12
PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD = 1 << 7, 1 << 11, 1 << 13
ENOSYS, EINVAL, EOPNOTSUPP = 1000, 22, 95


def hypercall(nr, a0=0, a1=0, a2=0, a3=0, **extra):
    """RAX, RBX, RCX, RDX, RSI <- R10..R14 (tdx_emulate_vmcall)."""
    return {"op": "tdvmcall", "r10": nr, "r11": a0, "r12": a1, "r13": a2, "r14": a3, **extra}


@pytest.mark.parametrize(("step", "r10"), [
    (hypercall(KICK_CPU, 0, 7), 0),               # PV_UNHALT: kick APIC ID 7 (none), yield
    (hypercall(SCHED_YIELD, 3), 0),                # PV_SCHED_YIELD
    (hypercall(SEND_IPI, 0, 0, 0, 0xF3), 0),      # PV_SEND_IPI: empty bitmap -> 0 delivered
    (hypercall(SEND_IPI, 1, 0, 0, 0x800 | 0xF3), neg(EINVAL)),   # logical destination
    (hypercall(SEND_IPI, 1, 0, 0, 0x40000 | 0xF3), neg(EINVAL)),  # a shorthand
    (hypercall(CLOCK_PAIRING, 0, 0), neg(EOPNOTSUPP)),  # tdsim: host clocksource not TSC
    (hypercall(3), neg(ENOSYS)),                   # no such hypercall
])
def test_without_enforce_every_pv_hypercall_is_allowed(step, r10):
    """guest_pv_has returns true when pv_cpuid.enforce is off (the default): KICK_CPU,
    SEND_IPI and SCHED_YIELD run; complete_hypercall_exit writes R10 only."""
    rec = call(step)
    assert rec["regs_out"]["r10"] == r10
    assert rec["regs_written"] == ["r10"]


@pytest.mark.parametrize("nr", [KICK_CPU, SEND_IPI, SCHED_YIELD])
def test_with_enforce_a_pv_hypercall_needs_its_feature_bit(nr):
    """With KVM_CAP_ENFORCE_PV_FEATURE_CPUID and no KVM leaf: -KVM_ENOSYS; with the
    feature's bit in 0x40000001 EAX: handled (0 here)."""
    rec = call(hypercall(nr), vmm={"enforce_pv_feature_cpuid": True})
    assert rec["regs_out"]["r10"] == neg(ENOSYS)
    rec = call(hypercall(nr), vmm={"enforce_pv_feature_cpuid": True,
                                   "kvm_pv_features": PV_UNHALT | PV_SEND_IPI
                                   | PV_SCHED_YIELD})
    assert rec["regs_out"]["r10"] == 0


def two_vcpus(sender_step, **vmm):
    """vCPU 1 halts with interrupts on and nothing to wake it; vCPU 0 computes, then makes
    `sender_step`."""
    r = run(scenario([
        {"op": "hlt", "vcpus": [1]},
        {"op": "cpuid", "name": "after", "vcpus": [1]},
        {"op": "compute", "us": 20, "vcpus": [0]},
        {**sender_step, "vcpus": [0]}], vmm=vmm, vcpus=2, duration_us=300))
    return r, r.details["calls"]


def test_kick_cpu_wakes_a_halted_vcpu():
    """kvm_pv_kick_cpu_op delivers APIC_DM_REMRD to the APIC ID in a1: __apic_accept_irq
    sets pv_unhalted and kicks; kvm_arch_vcpu_runnable is then true and the halted vCPU runs
    its next step."""
    _r, calls = two_vcpus(hypercall(KICK_CPU, 0, 1))
    assert calls["td0.vcpu0"][0]["regs_out"]["r10"] == 0
    assert [c["name"] for c in calls["td0.vcpu1"]] == ["hlt", "after"]
    assert calls["td0.vcpu1"][1]["t_ns"] > calls["td0.vcpu0"][0]["t_ns"]


def test_kick_cpu_refused_under_enforce_leaves_the_vcpu_halted():
    """Without PV_UNHALT under enforce: -KVM_ENOSYS and no kick."""
    _, calls = two_vcpus(hypercall(KICK_CPU, 0, 1), enforce_pv_feature_cpuid=True)
    assert calls["td0.vcpu0"][0]["regs_out"]["r10"] == neg(ENOSYS)
    assert [c["name"] for c in calls["td0.vcpu1"]] == ["hlt"]


def test_send_ipi_delivers_to_the_bitmap_and_counts():
    """kvm_pv_send_ipi: bit i of a0 is APIC ID a2 + i; the fixed vector of a3 is posted to
    each vCPU found and R10 = how many accepted (1)."""
    r, calls = two_vcpus(hypercall(SEND_IPI, 0b10, 0, 0, 0xF3))
    assert calls["td0.vcpu0"][0]["regs_out"]["r10"] == 1
    assert [c["name"] for c in calls["td0.vcpu1"]] == ["hlt", "after"]
    assert r.metrics["vm.td0.vcpu.1.ipi.received"] == 1


def test_map_gpa_range_hypercall_exit_fields():
    """____kvm_emulate_hypercall's KVM_EXIT_HYPERCALL: nr 12, args[0..2] = a0..a2 (the
    shared bit not stripped), ret preset 0, flags KVM_EXIT_HYPERCALL_LONG_MODE; args[3..5]
    are not written (the kvm_run page's zeros)."""
    rec = call(hypercall(MAP_GPA_RANGE, 0x200000, 4, 0x10))
    e = rec["exits"][0]
    assert e["hypercall"]["args"] == [0x200000, 4, 0x10, 0, 0, 0]
    assert e["hypercall"]["flags"] == 1      # KVM_EXIT_HYPERCALL_LONG_MODE
    assert rec["regs_out"]["r10"] == 0       # the VMM's ret
