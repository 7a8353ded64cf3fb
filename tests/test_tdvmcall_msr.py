"""MSR TDVMCALLs against tdx.c / msrs.c / lapic.c: which MSRs KVM emulates for a TD in each
generation, what each returns, the MSR filter, userspace exits and KVM_SET_MSRS.  Every
expected value is derived in a comment from the kernel function that produces it."""

import pytest

from tdsim.sim import run
from tests.scripted import (
    INVALID,
    REASON_FILTER,
    REASON_INVAL,
    REASON_UNKNOWN,
    SUCCESS,
    call,
    out,
    rdmsr,
    run_program,
    scenario,
    wrmsr,
)

RDMSR, WRMSR = 31, 32
ICR, SELF_IPI, ISR1, TMR0, LVR, LDR, SPIV, ESR, LVTT, TMICT = (
    0x830, 0x83F, 0x811, 0x818, 0x803, 0x80D, 0x80F, 0x828, 0x832, 0x838)
LEAF1_X2APIC_TSC_DEADLINE = {"leaf": 1, "ecx": (1 << 21) | (1 << 24)}


def with_cpuid(*entries):
    return {"cpuid": list(entries)}


# --- tdx_has_emulated_msr -----------------------------------------------------------------
@pytest.mark.parametrize(("index", "value"), [
    (0x1FC, 0),                    # MSR_IA32_POWER_CTL: msr_ia32_power_ctl, 0 at creation
    (0x277, 0x0007040600070406),   # MSR_IA32_CR_PAT: MSR_IA32_CR_PAT_DEFAULT
    (0xFE, 0x508),                 # MSR_MTRRcap: kvm_mtrr_get_msr gives 0x500 | KVM_NR_VAR_MTRR
    (0x3A, 1),                     # MSR_IA32_FEAT_CTL: tdx_get_msr gives FEAT_CTL_LOCKED
                                   # (no LMCE: mcg_cap = KVM_MAX_MCE_BANKS has no MCG_LMCE_P)
    (0x179, 32),                   # MSR_IA32_MCG_CAP: KVM_MAX_MCE_BANKS
    (0xCE, 0x80000000),            # MSR_PLATFORM_INFO: MSR_PLATFORM_INFO_CPUID_FAULT
    (0x8B, 0x100000000),           # MSR_IA32_UCODE_REV: microcode_version at creation
    (0xC0000080, 0xD01),           # MSR_EFER: SCE | LME | LMA | NX (tdx_vcpu_create)
    (0x1B, 0xFEE00D00),            # MSR_IA32_APICBASE: x2APIC on, enabled, BSP (vCPU 0)
    (0x4B564DF5, 1),               # MSR_KVM_POLL_CONTROL: 1 at creation; guest_pv_has is
                                   # true without KVM_CAP_ENFORCE_PV_FEATURE_CPUID
    (0x401, 0),                    # MSR_IA32_MC0_STATUS: a bank within mcg_cap & 0xff
])
def test_msrs_tdx_has_emulated_msr_accepts_are_read_in_the_kernel(index, value):
    """tdx_has_emulated_msr lets these through; kvm_get_msr_common answers with KVM's
    value at vCPU creation (R11), R10 not written."""
    rec = call(rdmsr(index))
    assert rec["kvm"] == "in_kernel"
    assert out(rec) == (SUCCESS, value)
    assert rec["regs_written"] == ["r11"]


@pytest.mark.parametrize("index", [0x10, 0xC0000081, 0x12345, 0x48])
def test_an_msr_the_td_list_lacks_is_invalid_operand_with_reason_inval(index):
    """tdx_get_msr returns 1 for an MSR outside tdx_has_emulated_msr (TSC, STAR, SPEC_CTRL:
    the TDX module's); kvm_msr_reason(1) is KVM_MSR_EXIT_REASON_INVAL, and without that
    user-space reason tdx_complete_emulated_msr writes INVALID_OPERAND to R10 only."""
    rec = call(rdmsr(index))
    assert out(rec) == (INVALID, RDMSR)
    assert rec["regs_written"] == ["r10"]
    rec = call(rdmsr(index), vmm={"msr_exits": ["inval"]})
    assert rec["exits"][0]["msr"]["reason"] == REASON_INVAL


@pytest.mark.parametrize("index", [0x1B, 0xC0000080, 0x3A])
def test_read_only_msrs_refuse_guest_writes(index):
    """tdx_is_read_only_msr (APICBASE, EFER, FEAT_CTL): tdx_set_msr returns 1 before
    anything else -> INVALID_OPERAND (reason INVAL)."""
    rec = call(wrmsr(index, 0), vmm={"msr_exits": ["inval"]})
    assert rec["exits"][0]["msr"]["reason"] == REASON_INVAL
    assert rec["regs_out"]["r10"] == INVALID


@pytest.mark.parametrize(("step", "vmm"), [
    # ARCH_CAPABILITIES: kvm_get/set_msr_common return KVM_MSR_RET_UNSUPPORTED unless the
    # guest CPUID has X86_FEATURE_ARCH_CAPABILITIES (7.0 EDX[29]); a guest write is always
    # UNSUPPORTED
    (rdmsr(0x10A), {}),
    (wrmsr(0x10A, 0), with_cpuid({"leaf": 7, "edx": 1 << 29})),
    # MCG_CAP has no case in kvm_set_msr_common: UNSUPPORTED
    (wrmsr(0x179, 0), {}),
    # MTRRcap likewise (only MTRRphysBase0..fix4K_F8000 and defType are written)
    (wrmsr(0xFE, 0), {}),
])
def test_unsupported_accesses_exit_with_reason_unknown(step, vmm):
    """kvm_msr_reason(KVM_MSR_RET_UNSUPPORTED) = KVM_MSR_EXIT_REASON_UNKNOWN: with the
    'unknown' user-space reason the access goes to the VMM, which fails it here."""
    rec = call(step, vmm={**vmm, "msr_exits": ["unknown"]})
    assert rec["exits"][0]["msr"]["reason"] == REASON_UNKNOWN
    assert rec["regs_out"]["r10"] == INVALID


def test_arch_capabilities_reads_when_the_guest_cpuid_has_it():
    """With 7.0 EDX[29] the read returns vcpu->arch.arch_capabilities (tdsim: 0)."""
    rec = call(rdmsr(0x10A), vmm=with_cpuid({"leaf": 7, "edx": 1 << 29}))
    assert out(rec) == (SUCCESS, 0)


def test_ucode_rev_guest_write_succeeds_and_is_ignored():
    """kvm_set_msr_common stores MSR_IA32_UCODE_REV only for a host write."""
    _, calls = run_program([wrmsr(0x8B, 7), rdmsr(0x8B)])
    assert calls[0]["regs_out"]["r10"] == SUCCESS
    assert out(calls[1]) == (SUCCESS, 0x100000000)


def test_power_ctl_stores_any_value():
    """MSR_IA32_POWER_CTL: kvm_set_msr_common stores the data as it is."""
    _, calls = run_program([wrmsr(0x1FC, 0x123456789), rdmsr(0x1FC)])
    assert calls[0]["regs_written"] == []  # a write that succeeds writes nothing back
    assert out(calls[1]) == (SUCCESS, 0x123456789)


@pytest.mark.parametrize(("value", "status", "after"), [
    (0x1800 | 1, SUCCESS, 0x1801),      # fast-strings: stored
    (0x0800, INVALID, 0x1800),          # clears PEBS_UNAVAIL: PMU_RO_MASK changed -> 1
    (0x1800 | 0x80, SUCCESS, 0x1800),   # EMON is "R": the write keeps the old bit
])
def test_misc_enable_guest_writes(value, status, after):
    """MSR_IA32_MISC_ENABLE (x86.c/msrs.c): a guest write changing PEBS/BTS_UNAVAIL fails;
    EMON keeps its old value; with the default MISC_ENABLE_NO_MWAIT quirk the rest is
    stored."""
    _, calls = run_program([wrmsr(0x1A0, value), rdmsr(0x1A0)])
    assert calls[0]["regs_out"]["r10"] == status
    assert out(calls[1]) == (SUCCESS, after)


@pytest.mark.parametrize(("index", "value", "status"), [
    (0xCE, 0, INVALID),                 # PLATFORM_INFO: a non-host write returns 1
    (0x140, 1, SUCCESS),                # MISC_FEATURES_ENABLES: CPUID_FAULT, which
                                        # PLATFORM_INFO advertises
    (0x140, 2, INVALID),                # any other bit -> 1
    (0x277, 0x0007040600070407, SUCCESS),  # CR_PAT: every byte a valid type
    (0x277, 0x0007040600070402, INVALID),  # type 2 is reserved: kvm_pat_valid fails
    (0x2FF, 0xC06, SUCCESS),            # MTRRdefType: E | FE | WB
    (0x2FF, 0x1006, INVALID),           # bits outside 0xcff: kvm_mtrr_valid fails
    (0x210, 0, INVALID),                # in the MTRR range but no MTRR: find_mtrr -> 1
    (0x17B, 0, INVALID),                # MCG_CTL without MCG_CTL_P: a guest write -> 1
    (0x17A, 5, SUCCESS),                # MCG_STATUS: stored
    (0x400, (1 << 64) - 1, SUCCESS),    # MC0_CTL: all ones
    (0x400, 5, INVALID),                # MC0_CTL: neither 0 nor all ones
    (0x401, 1, INVALID),                # MC0_STATUS: a nonzero guest write on Intel -> 1
    (0x280, 0, INVALID),                # MC0_CTL2 without MCG_CMCI_P: a guest write -> 1
    (0x4D0, 0, INVALID),                # MCG_EXT_CTL without MCG_LMCE_P (tdx_set_msr)
    (0x4B564DF5, 2, INVALID),           # POLL_CONTROL: only bit 0 exists
])
def test_guest_writes_follow_kvm_set_msr_common(index, value, status):
    """Each write's status is what kvm_set_msr_common / tdx_set_msr return for it."""
    rec = call(wrmsr(index, value))
    assert rec["regs_out"]["r10"] == status


# --- the TSC deadline and the x2APIC registers ---------------------------------------------
def test_tsc_deadline_is_ignored_unless_lvtt_is_in_tsc_deadline_mode():
    """kvm_set/get_lapic_tscdeadline_msr do nothing / read 0 unless the LVT timer is in
    TSC-deadline mode; the mode bit is writable when the guest CPUID has TSC_DEADLINE_TIMER
    (timer_mode_mask) and, with the APIC software-enabled (SPIV bit 8), LVTT keeps it."""
    vmm = with_cpuid(LEAF1_X2APIC_TSC_DEADLINE)
    _, calls = run_program([wrmsr(0x6E0, 0x1234), rdmsr(0x6E0),
                            wrmsr(SPIV, 0x1FF), wrmsr(LVTT, (2 << 17) | 0xEC),
                            wrmsr(0x6E0, 0x1234), rdmsr(0x6E0), rdmsr(LVTT)], vmm=vmm)
    assert [c["regs_out"]["r10"] for c in calls] == [SUCCESS] * 7
    assert calls[1]["regs_out"]["r11"] == 0
    assert calls[5]["regs_out"]["r11"] == 0x1234
    assert calls[6]["regs_out"]["r11"] == (2 << 17) | 0xEC


def test_x2apic_registers_read_as_kvm_lapic_reset_leaves_them():
    """vCPU 1 of 2: ID = vcpu_id; LDR = ((id >> 4) << 16) | 1 << (id & 0xf)
    (kvm_apic_calc_x2apic_ldr); LVR = APIC_VERSION 0x14 | (6 LVTs - 1) << 16 | directed EOI
    (the guest has x2APIC and a TD's IOAPIC is not in the kernel; kvm_apic_set_version);
    SPIV = 0xff (kvm_lapic_reset)."""
    r = run(scenario([rdmsr(0x802, vcpus=[1]), rdmsr(LDR, vcpus=[1]), rdmsr(LVR, vcpus=[1]),
                      rdmsr(SPIV, vcpus=[1])], vmm=with_cpuid(LEAF1_X2APIC_TSC_DEADLINE),
                     vcpus=2))
    got = [c["regs_out"]["r11"] for c in r.details["calls"]["td0.vcpu1"]]
    assert got == [1, (0 << 16) | (1 << 1), 0x14 | (5 << 16) | (1 << 24), 0xFF]


@pytest.mark.parametrize(("step", "status"), [
    (wrmsr(0x802, 5), INVALID),         # ID is read-only in x2APIC mode
    (wrmsr(LDR, 5), INVALID),           # so is LDR
    (wrmsr(LVR, 5), INVALID),           # LVR has no case in kvm_lapic_reg_write
    (wrmsr(ESR, 1), INVALID),           # x2APIC ESR takes only 0
    (wrmsr(ESR, 0), SUCCESS),
    (wrmsr(SPIV, 1 << 32), INVALID),    # bits 63:32 are reserved except in the ICR
    (wrmsr(ICR, 1 << 13), INVALID),     # X2APIC_ICR_RESERVED_BITS (bit 13)
    (wrmsr(ICR, 1 << 20), INVALID),     # ... and bits 31:20
    (rdmsr(0x808), INVALID),            # TASKPRI: virtualized, never emulated for a TD
    (rdmsr(0x80B), INVALID),            # EOI
    (rdmsr(0x810), INVALID),            # ISR0
])
def test_x2apic_register_rules(step, status):
    """kvm_x2apic_msr_write/read -> kvm_lapic_reg_write/read rules in x2APIC mode."""
    assert call(step)["regs_out"]["r10"] == status


def test_icr_write_clears_busy_and_reads_back_64_bits():
    """__kvm_x2apic_icr_write clears APIC_ICR_BUSY before storing; the x2APIC ICR reads as
    one 64-bit value (kvm_x2apic_icr_read)."""
    _, calls = run_program([wrmsr(ICR, (5 << 32) | (1 << 12) | 0xFD), rdmsr(ICR)])
    assert out(calls[1]) == (SUCCESS, (5 << 32) | 0xFD)


def test_lvt_writes_are_masked_while_the_apic_is_software_disabled():
    """kvm_lapic_reg_write: with SPIV's enable bit clear an LVT write gets APIC_LVT_MASKED;
    LVT0 keeps LINT_MASK bits only (0x1f7ff)."""
    _, calls = run_program([wrmsr(0x835, 0xFFFFF), rdmsr(0x835)])
    assert calls[1]["regs_out"]["r11"] == 0x1F7FF


@pytest.mark.parametrize(("abi", "isr1", "self_ipi", "tmr0"), [
    # v6.16: every 0x800..0x8ff index is emulated except TASKPRI, PROCPRI, EOI and the
    # "ISR/TMR/IRR .. + APIC_ISR_NR" ranges, which X2APIC_MSR()'s >> 4 reduces to ISR0,
    # TMR0 and IRR0: ISR1 reads KVM's copy (0), SELF_IPI takes a vector
    ("v6.16", (SUCCESS, 0), SUCCESS, INVALID),
    ("v6.16-rc1", (SUCCESS, 0), SUCCESS, INVALID),
    # today: only the 16 listed registers; ISR1 and SELF_IPI are not among them
    ("current", (INVALID, RDMSR), INVALID, INVALID),
])
def test_x2apic_emulated_set_differs_by_generation(abi, isr1, self_ipi, tmr0):
    """tdx_has_emulated_msr's x2APIC part, per generation."""
    _, calls = run_program([rdmsr(ISR1), wrmsr(SELF_IPI, 0xF0), rdmsr(TMR0)],
                           kvm={"tdvmcall_abi": abi})
    assert out(calls[0]) == isr1
    assert calls[1]["regs_out"]["r10"] == self_ipi
    assert calls[2]["regs_out"]["r10"] == tmr0


def test_self_ipi_in_v616_posts_the_vector_to_the_sender():
    """kvm_lapic_reg_write(APIC_SELF_IPI): kvm_apic_send_ipi(APIC_DEST_SELF | vector)."""
    r, _ = run_program([wrmsr(SELF_IPI, 0xF0)], kvm={"tdvmcall_abi": "v6.16"})
    assert r.metrics["ipi.received"] == 1


# --- the MSR filter and userspace exits ----------------------------------------------------
SELFTEST_FILTER = {"msr_filter": {"default_allow": False, "range": [
    {"flags": ["read"], "base": 0x1A0, "nmsrs": 1},
    {"flags": ["write"], "base": 0x1FC, "nmsrs": 1}]}}


def test_default_deny_filter_with_allow_ranges_as_the_selftest_sets_it():
    """kvm_msr_allowed: the first range containing the MSR for this access decides, else
    default_allow; x2APIC MSRs are never filtered.  (tdx_vm_test: READ allowed for
    MISC_ENABLE, WRITE for POWER_CTL, everything else denied.)"""
    _, calls = run_program([rdmsr(ICR), rdmsr(0x1A0), rdmsr(0x1FC), wrmsr(0x1A0, 0x1800),
                            wrmsr(0x1FC, 6)], vmm=SELFTEST_FILTER)
    assert [out(c) for c in calls] == [(SUCCESS, 0), (SUCCESS, 0x1800), (INVALID, RDMSR),
                                       (INVALID, WRMSR), (SUCCESS, WRMSR)]


def test_filtered_access_exits_with_reason_filter_and_the_vmm_answer():
    """kvm_msr_reason(KVM_MSR_RET_FILTERED) = FILTER; the VMM's msr.data goes to EDX:EAX
    (complete_fast_rdmsr) and then R11."""
    rec = call(rdmsr(0x1FC, vmm={"data": 0x77}),
               vmm={**SELFTEST_FILTER, "msr_exits": ["filter"]})
    e = rec["exits"][0]
    assert e["msr"] == {"error": 0, "reason": REASON_FILTER, "index": 0x1FC, "data": 0x77}
    assert e["before_vmm"]["data"] == 0          # kvm_msr_user_space: 0 for a read
    assert out(rec) == (SUCCESS, 0x77)


def test_msr_error_is_a_u8():
    """kvm_run msr.error is a __u8: a VMM writing 0x100 reports success."""
    rec = call(rdmsr(0x1234, vmm={"error": 0x100, "data": 9}),
               vmm={"msr_exits": ["inval"]})
    assert rec["regs_out"]["r10"] == SUCCESS


# --- KVM_SET_MSRS / KVM_GET_MSRS -----------------------------------------------------------
def test_host_set_msrs_are_what_the_guest_reads():
    """tdx_vm_test's verify_guest_msr_reads: KVM_SET_MSRS of ICR = 4, MISC_ENABLE = 5,
    POWER_CTL = 6 (host writes: MISC_ENABLE's RO bits may change), then guest reads with the
    selftest's filter."""
    vmm = {**SELFTEST_FILTER, "set_msr": [{"index": ICR, "value": 4},
                                          {"index": 0x1A0, "value": 5},
                                          {"index": 0x1FC, "value": 6}]}
    r, calls = run_program([rdmsr(ICR), rdmsr(0x1A0), rdmsr(0x1FC)], vmm=vmm)
    assert [out(c) for c in calls] == [(SUCCESS, 4), (SUCCESS, 5), (INVALID, RDMSR)]
    assert r.details["vmm"]["set_msrs"]["td0.vcpu0"] == {"asked": 3, "set": 3}


def test_kvm_set_msrs_stops_at_the_first_refused_write():
    """msr_io counts the writes done before the first failure (APICBASE is read-only even
    for the host in tdx_set_msr)."""
    vmm = {"set_msr": [{"index": 0x1FC, "value": 1}, {"index": 0x1B, "value": 0},
                       {"index": 0x1FC, "value": 2}]}
    r, calls = run_program([rdmsr(0x1FC)], vmm=vmm)
    assert r.details["vmm"]["set_msrs"]["td0.vcpu0"] == {"asked": 3, "set": 1}
    assert out(calls[0]) == (SUCCESS, 1)


def test_get_msrs_reads_back_the_guest_writes():
    """tdx_vm_test's verify_guest_msr_writes: after the guest's writes (MISC_ENABLE filtered)
    KVM_GET_MSRS reads ICR = 4, MISC_ENABLE = 0x1800 (unchanged), POWER_CTL = 6."""
    r, _ = run_program([wrmsr(ICR, 4), wrmsr(0x1A0, 5), wrmsr(0x1FC, 6)],
                       vmm={**SELFTEST_FILTER, "get_msrs": [ICR, 0x1A0, 0x1FC]})
    assert r.details["vmm"]["get_msrs"]["td0.vcpu0"] == {
        "0x830": 4, "0x1a0": 0x1800, "0x1fc": 6}


def test_poll_control_is_unsupported_under_enforce_without_the_feature():
    """MSR_KVM_POLL_CONTROL: guest_pv_has(KVM_FEATURE_POLL_CONTROL) is false with
    KVM_CAP_ENFORCE_PV_FEATURE_CPUID and no bit 12 -> UNSUPPORTED (reason UNKNOWN)."""
    rec = call(rdmsr(0x4B564DF5), vmm={"enforce_pv_feature_cpuid": True,
                                       "msr_exits": ["unknown"]})
    assert rec["exits"][0]["msr"]["reason"] == REASON_UNKNOWN
    rec = call(rdmsr(0x4B564DF5), vmm={"enforce_pv_feature_cpuid": True,
                                       "kvm_pv_features": 1 << 12})
    assert out(rec) == (SUCCESS, 1)
