"""Scripted TDX-module outcomes: a vp_enter step makes a TDH.VP.ENTER return a chosen status
with chosen output registers, and the record shows what tdx_handle_exit (arch/x86/kvm/vmx/
tdx.c) made of it -- one test per outcome it distinguishes, each kvm_run field derived from
the kernel code that fills it."""

import pytest

from tdsim import arch
from tdsim.sim import run
from tests.scripted import SHARED, run_program, scenario

NR_VCPU, NR_TD = arch.TDX_NON_RECOVERABLE_VCPU, arch.TDX_NON_RECOVERABLE_TD
NMI_INFO, MC_INFO, PF_INFO = 0x80000202, 0x80000312, 0x80000B0E   # valid | type | vector
ENTRY_CPU = 1                                                     # the TD's vCPU is pinned


def outcome(status, program_after=({"op": "cpuid", "name": "after"},), **step):
    """Run [vp_enter(status, ...), cpuid]; (result, the vp_enter record, the call names)."""
    r, calls = run_program([{"op": "vp_enter", "status": status, **step}, *program_after],
                           duration_us=500)
    return r, calls[0], [c["name"] for c in calls[1:]]


def internal_error(ret):
    """The unhandled exit: KVM_EXIT_INTERNAL_ERROR, suberror 4
    (KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON), ndata 2: the raw vp_enter_ret and
    last_vmentry_cpu."""
    return [{"exit_reason": "KVM_EXIT_INTERNAL_ERROR",
             "internal": {"suberror": 4, "ndata": 2, "data": [ret, ENTRY_CPU]}}]


def exits(rec):
    return [{k: v for k, v in e.items() if k != "t_ns"} for e in rec["exits"]]


def test_operand_busy_is_retried_in_the_kernel():
    """tdx_exit_handlers_fastpath: TDX_OPERAND_BUSY -> EXIT_FASTPATH_EXIT_HANDLED, so
    tdx_handle_exit returns 1 at once; the next entry runs the guest."""
    r, rec, after = outcome(arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_SEPT)
    assert (rec["kvm"], rec["handle_exit"], rec["entered"]) == ("in_kernel", 1, False)
    assert rec["exit_reason"] == "INVALID"   # not one of the five valid statuses: -1u
    assert after == ["after"]
    assert r.metrics["vp_enter_busy"] == 1


def test_genuine_ept_misconfig_is_a_kvm_bug():
    """A raw vp_enter_ret of 49 is a real EPT misconfig, impossible for a TD:
    tdx_to_vmx_exit_reason gives -1u, tdx_handle_exit does KVM_BUG_ON and returns -EIO."""
    r, rec, after = outcome(arch.EXIT_REASON_EPT_MISCONFIG)
    assert (rec["kvm"], rec["kvm_run"], rec["exit_reason"]) == ("kvm_run_error", -5,
                                                                 "INVALID")
    assert r.metrics["kvm_bug"] == 1
    assert after == []


@pytest.mark.parametrize("ret", [arch.TDX_SEAMCALL_VMFAILINVALID, arch.TDX_SEAMCALL_GP,
                                 arch.TDX_SEAMCALL_UD])
def test_seamcall_software_error_is_an_unhandled_exit_and_a_kvm_bug(ret):
    """(vp_enter_ret & TDX_SW_ERROR) == TDX_SW_ERROR: KVM_BUG_ON(!kvm_rebooting), then the
    unhandled exit with the raw status."""
    r, rec, _ = outcome(ret)
    assert exits(rec) == internal_error(ret)
    assert r.metrics["kvm_bug"] == 1


def test_failed_vm_entry_reports_the_derived_reason_and_cpu():
    """tdx_failed_vmentry (a valid status, bit 31 set, not -1u): KVM_EXIT_FAIL_ENTRY with
    hardware_entry_failure_reason = exit_reason.full (the 32-bit derived reason) and cpu =
    last_vmentry_cpu."""
    _, rec, after = outcome(NR_TD | 0x80000021)
    assert exits(rec) == [{"exit_reason": "KVM_EXIT_FAIL_ENTRY", "fail_entry": {
        "hardware_entry_failure_reason": 0x80000021, "cpu": ENTRY_CPU}}]
    assert after == []   # a fatal exit: the VMM stops the vCPU


@pytest.mark.parametrize("ret", [
    arch.TDX_TSC_ROLLBACK,                     # ERROR bit: reason -1u
    NR_VCPU | arch.EXIT_REASON_HLT,            # NON_RECOVERABLE and not TRIPLE_FAULT
    arch.TDX_OPERAND_INVALID | 0x1,            # another error status
])
def test_error_or_non_recoverable_status_is_an_unhandled_exit(ret):
    """vp_enter_ret & (TDX_ERROR | TDX_NON_RECOVERABLE) with a basic reason other than
    TRIPLE_FAULT: kvm_pr_unimpl, then the unhandled exit."""
    _, rec, _ = outcome(ret)
    assert exits(rec) == internal_error(ret)


@pytest.mark.parametrize("ret", [NR_VCPU | arch.EXIT_REASON_TRIPLE_FAULT,
                                 arch.EXIT_REASON_TRIPLE_FAULT])
def test_triple_fault_is_a_shutdown(ret):
    """EXIT_REASON_TRIPLE_FAULT (with or without NON_RECOVERABLE): KVM_EXIT_SHUTDOWN, no
    union member."""
    _, rec, after = outcome(ret)
    assert exits(rec) == [{"exit_reason": "KVM_EXIT_SHUTDOWN"}]
    assert (rec["handle_exit"], after) == (0, [])


@pytest.mark.parametrize("ret", [
    arch.TDX_TD_EXIT_BEFORE_L2_ENTRY,          # no error bit, not a valid status: -1u
    54,                                        # WBINVD: no handler for a TD
    3,                                         # INIT_SIGNAL: no handler for a TD
])
def test_an_exit_reason_tdx_handle_exit_does_not_handle_is_unhandled(ret):
    """The default case of the switch: the unhandled exit with the raw vp_enter_ret."""
    _, rec, _ = outcome(ret)
    assert exits(rec) == internal_error(ret)


@pytest.mark.parametrize("r9", [NMI_INFO, MC_INFO])
def test_exception_nmi_exit_for_an_nmi_or_machine_check_re_enters(r9):
    """tdx_handle_exception_nmi: is_nmi / is_machine_check of R9 -> 1 (the NMI was taken at
    the exit)."""
    _, rec, after = outcome(arch.EXIT_REASON_EXCEPTION_NMI, r9=r9)
    assert (rec["kvm"], rec["exit_reason"], after) == ("in_kernel", "EXCEPTION_NMI",
                                                       ["after"])
    assert rec["regs_in"] == {"r9": r9}


def test_exception_nmi_exit_for_another_vector_is_kvm_exit_exception():
    """Any other interruption information: KVM_EXIT_EXCEPTION with ex.exception = the vector
    (R9 & 0xff) and ex.error_code = 0; QEMU stops the vCPU."""
    _, rec, after = outcome(arch.EXIT_REASON_EXCEPTION_NMI, r9=PF_INFO)
    assert exits(rec) == [{"exit_reason": "KVM_EXIT_EXCEPTION",
                           "ex": {"exception": 14, "error_code": 0}}]
    assert after == []


@pytest.mark.parametrize(("reason", "r9"), [
    (arch.EXIT_REASON_EXTERNAL_INTERRUPT, arch.INTR_INFO_VALID_MASK | 0xEC),
    (arch.EXIT_REASON_OTHER_SMI, 0)])
def test_external_interrupt_and_other_smi_re_enter(reason, r9):
    """EXTERNAL_INTERRUPT with a valid external-interrupt R9 (the host handler of its vector
    runs IRQs-off): ++irq_exits, 1; OTHER_SMI: 1."""
    r, rec, after = outcome(reason, r9=r9)
    assert (rec["kvm"], after) == ("in_kernel", ["after"])
    assert r.metrics.get("kvm_bug", 0) == 0


def test_external_interrupt_exit_without_interrupt_info_is_a_kvm_bug():
    """EXTERNAL_INTERRUPT whose R9 is not a valid external interrupt:
    handle_external_interrupt_irqoff's KVM_BUG ("unexpected VM-Exit interrupt info")."""
    r, _rec, after = outcome(arch.EXIT_REASON_EXTERNAL_INTERRUPT, r9=0)
    assert r.metrics["kvm_bug.handle_external_interrupt_irqoff"] == 1
    assert after == []


def test_private_pending_ept_violation_kills_the_vm():
    """tdx_handle_ept_violation: a private GPA whose extended exit qualification is
    PENDING_EPT_VIOLATION (6) with no protection bits in the exit qualification ("guest
    access before accepting") -> kvm_vm_dead, -EIO; every other vCPU fails KVM_RUN too."""
    r = run(scenario([{"op": "vp_enter", "status": 48, "r8": 0x100000, "rdx": 6,
                       "vcpus": [0]},
                      {"op": "loop", "count": 0, "vcpus": [1], "steps": [
                          {"op": "compute", "us": 2}, {"op": "cpuid"}]}],
                     vcpus=2, duration_us=300))
    rec = r.details["calls"]["td0.vcpu0"][0]
    assert (rec["kvm"], rec["kvm_run"]) == ("kvm_run_error", -5)
    assert r.metrics["late_abort.vm_dead"] == 1          # vCPU 1's next entry
    assert r.metrics.get("kvm_bug", 0) == 0              # dead, not bugged


def test_private_ept_violation_with_protection_bits_is_a_fault():
    """With PROT bits (or another extended type) the access is a write fault on a private
    page that is private: mapped, 1."""
    _, rec, after = outcome(48, r8=0x100000, rdx=6, rcx=0x8)
    assert (rec["kvm"], after) == ("in_kernel", ["after"])


def test_shared_instruction_fetch_is_a_kvm_bug():
    """A shared GPA with EPT_VIOLATION_ACC_INSTR: KVM_BUG_ON, -EIO."""
    r, rec, _ = outcome(48, r8=SHARED | 0x100000, rcx=0x4)
    assert (rec["kvm"], rec["kvm_run"]) == ("kvm_run_error", -5)
    assert r.metrics["kvm_bug"] == 1


def test_shared_access_to_private_memory_is_a_memory_fault():
    """All memory starts private: a shared access faults with KVM_EXIT_MEMORY_FAULT (flags
    0, the page's GPA without the shared bit, PAGE_SIZE) and KVM_RUN returns -EFAULT; QEMU
    converts the page to shared and runs again, so the guest goes on."""
    _, rec, after = outcome(48, r8=SHARED | 0x100123, rcx=0x2)
    assert exits(rec) == [{"exit_reason": "KVM_EXIT_MEMORY_FAULT", "memory_fault": {
        "flags": 0, "gpa": 0x100000, "size": 4096}}]
    assert rec["kvm_run"] == -14
    assert after == ["after"]


def test_private_access_to_memory_mapgpa_made_shared_is_a_private_memory_fault():
    """After MapGPA converted the range to shared (the VMM's KVM_SET_MEMORY_ATTRIBUTES), a
    private access faults with KVM_MEMORY_EXIT_FLAG_PRIVATE (1 << 3)."""
    _r, calls = run_program([
        {"op": "tdvmcall", "r11": "map_gpa", "r12": SHARED | 0x200000, "r13": 0x1000},
        {"op": "vp_enter", "status": 48, "r8": 0x200000, "rcx": 0x2},
        {"op": "cpuid", "name": "after"}], duration_us=500)
    rec = calls[1]
    assert exits(rec)[0]["memory_fault"] == {"flags": 8, "gpa": 0x200000, "size": 4096}
    assert calls[2]["name"] == "after"


def test_nth_targets_a_later_entry():
    """nth = 2: the first entry runs the guest to its CPUID; the second (resuming it) gets
    the outcome."""
    _, calls = run_program([{"op": "vp_enter", "status": arch.EXIT_REASON_OTHER_SMI, "nth": 2},
                            {"op": "cpuid", "name": "a"}, {"op": "cpuid", "name": "b"}],
                           duration_us=500)
    assert [c["name"] for c in calls] == ["a", "vp_enter", "b"]


def test_outcomes_are_exact_under_fault_injection_and_deterministic():
    """The outcome takes its entry whatever the [faults] streams draw there (they draw at
    every SEAMCALL either way), and the run is the same run twice."""
    faults = {"operand_busy": 0.9, "operand_busy_ids": [0x80]}
    prog = [{"op": "vp_enter", "status": arch.EXIT_REASON_EXCEPTION_NMI, "r9": PF_INFO - 0xE + 3,
             "nth": 3},
            {"op": "loop", "count": 20, "steps": [{"op": "cpuid"}]}]
    a = run(scenario(prog, faults=faults, duration_us=500))
    b = run(scenario(prog, faults=faults, duration_us=500))
    assert a.details == b.details
    assert a.metrics == b.metrics
    rec = next(c for c in a.details["calls"]["td0.vcpu0"] if c.get("op") == "vp_enter")
    assert rec["exits"][0]["ex"] == {"exception": 3, "error_code": 0}
    assert a.metrics["faults.scripted"] == 1
    assert a.metrics["late_abort.operand_busy"] > 0
