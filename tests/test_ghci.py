"""The GHCI behaviour suite: every TDVMCALL rule of docs/tdvmcall.md, through scripted
guests, asserting the exact registers the guest gets back and the exits KVM makes."""

import pytest

from tdsim import arch
from tdsim.scenario import scenario_from_dict
from tdsim.sim import run

SHARED = 1 << 47
SUCCESS = arch.TDVMCALL_STATUS_SUCCESS
RETRY = arch.TDVMCALL_STATUS_RETRY
INVALID = arch.TDVMCALL_STATUS_INVALID_OPERAND
ALIGN = arch.TDVMCALL_STATUS_ALIGN_ERROR
UNSUPPORTED = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
MiB2 = 2 * 1024 * 1024
U64 = (1 << 64) - 1


def run_program(program, vmm=None, kvm=None, timer_hz=0, duration_us=3000, costs=None,
                interrupts=None):
    """Run one pinned scripted vCPU; returns (result, its call records)."""
    scenario = scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "kvm": kvm or {},
        "vmm": vmm or {},
        "costs": costs or {},
        "vm": [{"vcpus": 1, "pin": [1], "interrupts": interrupts or {},
                "workload": {"program": program, "timer_hz": timer_hz}}],
    }, name="<ghci>")
    result = run(scenario)
    return result, result.details["calls"]["td0.vcpu0"]


def call(step, **kw):
    """The record of a single call."""
    _, calls = run_program([step], **kw)
    assert len(calls) == 1
    return calls[0]


def tdvmcall(leaf, r12=0, r13=0, r14=0, r15=0, **extra):
    return {"op": "tdvmcall", "r11": leaf, "r12": r12, "r13": r13, "r14": r14, "r15": r15,
            **extra}


def out(rec):
    o = rec["regs_out"]
    return o["r10"], o["r11"]


# --- Instruction.CPUID ---------------------------------------------------------------------
def test_cpuid_returns_the_vmm_table_in_r12_to_r15():
    """CPUID leaf R12 / sub-leaf R13 returns EAX, EBX, ECX, EDX in R12..R15, in the kernel."""
    rec = call({"op": "cpuid", "leaf": 7, "subleaf": 0},
               vmm={"cpuid": [{"leaf": 7, "subleaf": 0, "eax": 1, "ebx": 2, "ecx": 3,
                               "edx": 4}]})
    assert rec["kvm"] == "in_kernel"
    assert rec["exits"] == []
    assert rec["regs_out"] == {"r10": SUCCESS, "r11": arch.TDVMCALL_CPUID, "r12": 1, "r13": 2,
                               "r14": 3, "r15": 4}


def test_cpuid_leaf_missing_from_the_table_reads_zero():
    """A leaf the VMM did not set reads as zeros."""
    rec = call({"op": "cpuid", "leaf": 0x40000000, "subleaf": 0})
    assert [rec["regs_out"][r] for r in ("r10", "r12", "r13", "r14", "r15")] == [0] * 5


# --- Instruction.HLT -----------------------------------------------------------------------
def test_hlt_blocks_the_vcpu_when_nothing_wakes_it():
    """HLT is handled in the kernel (SUCCESS) and the vCPU blocks: with no interrupt source
    the next step never runs."""
    result, calls = run_program([{"op": "hlt"}, {"op": "cpuid", "leaf": 1}])
    assert len(calls) == 1
    assert calls[0]["kvm"] == "in_kernel"
    assert out(calls[0]) == (SUCCESS, arch.TDVMCALL_HLT)
    assert result.metrics["halt_block"] == 1


def test_hlt_is_woken_by_a_posted_interrupt():
    """With the guest timer, the halted vCPU wakes and runs the next step."""
    result, calls = run_program([{"op": "hlt"}, {"op": "cpuid", "leaf": 1}], timer_hz=10000)
    assert [c["name"] for c in calls] == ["hlt", "cpuid"]
    assert result.metrics["halt_wakeup"] >= 1


def test_hlt_passes_the_interrupts_blocked_flag_in_r12():
    """R12 = 1 (interrupts blocked) reaches KVM."""
    rec = call({"op": "hlt", "irqs_blocked": True})
    assert rec["regs_in"]["r12"] == 1
    assert rec["regs_in"]["r11"] == arch.TDVMCALL_HLT


# --- Instruction.IO ------------------------------------------------------------------------
def test_io_out_exits_to_userspace_with_its_fields():
    """OUT: KVM_EXIT_IO with direction 1, size, port, count 1 and the data; R10 SUCCESS."""
    rec = call(tdvmcall("io", 2, 1, 0x70, 0x1234))
    assert len(rec["exits"]) == 1
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_IO"
    assert e["io"] == {"direction": 1, "size": 2, "port": 0x70, "count": 1, "data": 0x1234}
    assert rec["regs_out"]["r10"] == SUCCESS


def test_io_out_data_is_truncated_to_the_size():
    """Only `size` bytes of R15 reach userspace."""
    rec = call(tdvmcall("io", 1, 1, 0x3F8, 0xABCD))
    assert rec["exits"][0]["io"]["data"] == 0xCD


def test_io_in_returns_the_device_value_in_r11():
    """IN from a VMM device: R11 = its read value, truncated to the size."""
    rec = call(tdvmcall("io", 1, 0, 0x3F8),
               vmm={"device": [{"space": "pio", "base": 0x3F8, "size": 8,
                                "read_value": 0x1A5}]})
    assert rec["exits"][0]["io"]["direction"] == 0
    assert out(rec) == (SUCCESS, 0xA5)


def test_io_in_from_an_unclaimed_port_reads_all_ones():
    """No device on the port: the VMM returns all ones (4 bytes)."""
    rec = call(tdvmcall("io", 4, 0, 0x80))
    assert out(rec) == (SUCCESS, 0xFFFFFFFF)


@pytest.mark.parametrize("size", [0, 3, 8])
def test_io_size_other_than_1_2_4_is_invalid_operand(size):
    """IO with size not in {1, 2, 4}: INVALID_OPERAND in the kernel, no userspace exit."""
    rec = call(tdvmcall("io", size, 1, 0x3F8, 1))
    assert rec["exits"] == []
    assert out(rec) == (INVALID, arch.TDVMCALL_IO)


def test_io_direction_other_than_0_1_is_invalid_operand():
    """IO with R13 not 0 or 1: INVALID_OPERAND."""
    rec = call(tdvmcall("io", 1, 2, 0x3F8, 1))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_io_out_to_an_ioeventfd_is_completed_in_the_kernel():
    """An in-kernel device claims the OUT: no userspace exit, the write is recorded."""
    result, calls = run_program([tdvmcall("io", 2, 1, 0xC050, 7)],
                                vmm={"device": [{"name": "virtio", "space": "pio",
                                                 "base": 0xC040, "size": 32,
                                                 "ioeventfd": True}]})
    assert calls[0]["kvm"] == "in_kernel"
    assert calls[0]["regs_out"]["r10"] == SUCCESS
    assert result.details["vmm"]["devices"]["virtio"]["writes_total"] == 1


# --- Instruction.RDMSR / WRMSR -------------------------------------------------------------
def test_rdmsr_of_an_emulated_msr_returns_its_value_in_r11():
    """RDMSR IA32_MISC_ENABLE: in the kernel, R11 = KVM's value (PEBS/BTS unavailable)."""
    rec = call({"op": "rdmsr", "index": 0x1A0})
    assert rec["kvm"] == "in_kernel"
    assert out(rec) == (SUCCESS, 0x1800)


def test_wrmsr_then_rdmsr_reads_the_written_value():
    """WRMSR IA32_POWER_CTL (R13 = value) then RDMSR returns it."""
    _, calls = run_program([{"op": "wrmsr", "index": 0x1FC, "value": 0x123456789},
                            {"op": "rdmsr", "index": 0x1FC}])
    assert calls[0]["regs_out"]["r10"] == SUCCESS
    assert out(calls[1]) == (SUCCESS, 0x123456789)


def test_rdmsr_of_an_msr_kvm_does_not_emulate_is_invalid_operand():
    """An MSR outside KVM's TDX set fails: INVALID_OPERAND, R11 unchanged."""
    rec = call({"op": "rdmsr", "index": 0x12345})
    assert rec["exits"] == []
    assert out(rec) == (INVALID, arch.TDVMCALL_RDMSR)


def test_wrmsr_to_a_read_only_msr_is_invalid_operand():
    """WRMSR IA32_ARCH_CAPABILITIES fails: INVALID_OPERAND."""
    rec = call({"op": "wrmsr", "index": 0x10A, "value": 1})
    assert rec["regs_out"]["r10"] == INVALID


def test_rdmsr_denied_by_the_filter_is_invalid_operand():
    """The VMM's MSR filter denies the read and no userspace MSR exit is enabled."""
    rec = call({"op": "rdmsr", "index": 0x1A0}, vmm={"msr_filter_deny_read": [0x1A0]})
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_rdmsr_denied_by_the_filter_exits_to_userspace_with_the_filter_reason():
    """With msr_exits = [filter]: KVM_EXIT_X86_RDMSR (reason FILTER); R11 = the VMM's value."""
    rec = call({"op": "rdmsr", "index": 0x1A0},
               vmm={"msr_filter_deny_read": [0x1A0], "msr_exits": ["filter"],
                    "msr": [{"index": 0x1A0, "value": 0x42}]})
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_X86_RDMSR"
    assert e["msr"]["index"] == 0x1A0
    assert e["msr"]["reason"] == 4
    assert e["msr"]["error"] == 0
    assert out(rec) == (SUCCESS, 0x42)


def test_wrmsr_unknown_msr_exits_with_inval_reason_and_vmm_error_is_invalid_operand():
    """With msr_exits = [inval]: KVM_EXIT_X86_WRMSR with the data; the VMM fails it."""
    rec = call({"op": "wrmsr", "index": 0x9999, "value": 0x1_0000_0002},
               vmm={"msr_exits": ["inval"]})
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_X86_WRMSR"
    assert e["msr"] == {"error": 1, "reason": 1, "index": 0x9999, "data": 0x1_0000_0002}
    assert rec["regs_out"]["r10"] == INVALID


def test_x2apic_msrs_are_never_filtered():
    """A deny entry for the x2APIC ICR has no effect (kvm_msr_allowed)."""
    rec = call({"op": "wrmsr", "index": 0x830, "value": 0xFD},
               vmm={"msr_filter_deny_write": [0x830]})
    assert rec["regs_out"]["r10"] == SUCCESS


# --- #VE.RequestMMIO -----------------------------------------------------------------------
def test_mmio_read_exits_with_the_shared_bit_stripped_and_r11_from_the_vmm():
    """MMIO read of a shared GPA: KVM_EXIT_MMIO phys_addr without the shared bit; R11 = data."""
    rec = call(tdvmcall("mmio", 4, 0, SHARED | 0xFEB00010),
               vmm={"device": [{"space": "mmio", "base": 0xFEB00000, "size": 0x1000,
                                "read_value": 0xDEADBEEF12}]})
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_MMIO"
    assert e["mmio"] == {"phys_addr": 0xFEB00010, "len": 4, "is_write": 0, "data": 0xADBEEF12}
    assert out(rec) == (SUCCESS, 0xADBEEF12)


def test_mmio_write_exits_with_its_data_and_completes_without_a_callback():
    """MMIO write: is_write 1 and the data; the guest resumes with R10 SUCCESS."""
    rec = call(tdvmcall("mmio", 8, 1, SHARED | 0xFEB00000, 0x1122334455667788))
    assert rec["exits"][0]["mmio"] == {"phys_addr": 0xFEB00000, "len": 8, "is_write": 1,
                                       "data": 0x1122334455667788}
    assert rec["regs_out"]["r10"] == SUCCESS


@pytest.mark.parametrize("size", [0, 3, 16])
def test_mmio_size_other_than_1_2_4_8_is_invalid_operand(size):
    """MMIO with size not in {1, 2, 4, 8}: INVALID_OPERAND, no exit."""
    rec = call(tdvmcall("mmio", size, 0, SHARED | 0xFEB00000))
    assert rec["exits"] == []
    assert out(rec) == (INVALID, arch.TDVMCALL_VE_REQUEST_MMIO)


def test_mmio_direction_other_than_0_1_is_invalid_operand():
    """MMIO with R13 = 2: INVALID_OPERAND."""
    rec = call(tdvmcall("mmio", 4, 2, SHARED | 0xFEB00000))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_mmio_to_a_private_gpa_is_invalid_operand():
    """MMIO to a private GPA (shared bit clear): INVALID_OPERAND."""
    rec = call(tdvmcall("mmio", 4, 0, 0xFEB00000))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_mmio_whose_last_byte_leaves_the_shared_range_is_invalid_operand():
    """The last byte must be shared too: an access wrapping past the top is refused."""
    rec = call(tdvmcall("mmio", 8, 0, SHARED | (SHARED - 4)))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_mmio_page_crossing_shared_access_is_forwarded():
    """KVM (merged tdx_emulate_mmio) has no page-crossing check: the access goes to the VMM."""
    rec = call(tdvmcall("mmio", 8, 0, SHARED | 0xFEB00FFC))
    assert rec["exits"][0]["mmio"]["phys_addr"] == 0xFEB00FFC


def test_mmio_write_to_an_ioeventfd_is_completed_in_the_kernel():
    """A write claimed on the MMIO bus: no exit, R10 SUCCESS."""
    rec = call(tdvmcall("mmio", 4, 1, SHARED | 0xFE000000, 1),
               vmm={"device": [{"space": "mmio", "base": 0xFE000000, "size": 4,
                                "ioeventfd": True}]})
    assert rec["kvm"] == "in_kernel"
    assert rec["regs_out"]["r10"] == SUCCESS


# --- MapGPA --------------------------------------------------------------------------------
GPA = SHARED | 0x100000000


def test_map_gpa_without_exit_hypercall_is_subfunc_unsupported_with_r11_gpa():
    """KVM_CAP_EXIT_HYPERCALL off: SUBFUNC_UNSUPPORTED, R11 = the GPA (checked first)."""
    rec = call(tdvmcall("map_gpa", GPA + 1, 0), vmm={"exit_hypercall": False})
    assert rec["exits"] == []
    assert out(rec) == (UNSUPPORTED, GPA + 1)


@pytest.mark.parametrize(("gpa", "size"), [
    (0xFFFFFFFFFFFFF000, 0x2000),     # gpa + size overflows
    (GPA, 0),                         # empty range (gpa + 0 <= gpa)
    (1 << 48, 0x1000),                # beyond the guest's physical address width
    (SHARED - 0x1000, 0x2000),        # starts private, ends shared
])
def test_map_gpa_bad_range_is_invalid_operand_with_r11_gpa(gpa, size):
    """Overflow, empty, illegal GPA or a shared-bit mismatch: INVALID_OPERAND, R11 = GPA."""
    rec = call(tdvmcall("map_gpa", gpa, size))
    assert rec["exits"] == []
    assert out(rec) == (INVALID, gpa)


@pytest.mark.parametrize(("gpa", "size"), [(GPA + 0x800, 0x1000), (GPA, 0x1800)])
def test_map_gpa_unaligned_start_or_size_is_align_error(gpa, size):
    """Start or size not 4 KiB aligned: ALIGN_ERROR, R11 = GPA."""
    rec = call(tdvmcall("map_gpa", gpa, size))
    assert out(rec) == (ALIGN, gpa)


def test_map_gpa_range_checks_come_before_the_alignment_check():
    """Unaligned and crossing the shared bit: INVALID_OPERAND wins."""
    rec = call(tdvmcall("map_gpa", SHARED - 0x800, 0x1000))
    assert rec["regs_out"]["r10"] == INVALID


def test_map_gpa_is_forwarded_in_2mib_chunks():
    """5 MiB shared: three KVM_EXIT_HYPERCALL (MAP_GPA_RANGE) of 512, 512, 256 pages,
    shared bit stripped, attributes DECRYPTED; then SUCCESS with R11 unchanged."""
    rec = call(tdvmcall("map_gpa", GPA, 5 * 1024 * 1024))
    base = GPA & ~SHARED
    assert [(e["exit_reason"], e["hypercall"]["nr"], e["hypercall"]["args"][:3])
            for e in rec["exits"]] == [
        ("KVM_EXIT_HYPERCALL", 12, [base, 512, 0]),
        ("KVM_EXIT_HYPERCALL", 12, [base + MiB2, 512, 0]),
        ("KVM_EXIT_HYPERCALL", 12, [base + 2 * MiB2, 256, 0]),
    ]
    assert out(rec) == (SUCCESS, arch.TDVMCALL_MAP_GPA)


def test_map_gpa_of_a_private_range_asks_for_encrypted():
    """A private range is forwarded with KVM_MAP_GPA_RANGE_ENCRYPTED."""
    rec = call(tdvmcall("map_gpa", 0x100000000, 0x1000))
    assert rec["exits"][0]["hypercall"]["args"][:3] == [0x100000000, 1, 1 << 4]


def test_map_gpa_eagain_from_the_vmm_is_retry_with_the_next_gpa():
    """The VMM answers EAGAIN on the second chunk: RETRY, R11 = the chunk's GPA."""
    rec = call(tdvmcall("map_gpa", GPA, 3 * MiB2), vmm={"map_gpa_results": ["success",
                                                                           "eagain"]})
    assert len(rec["exits"]) == 2
    assert out(rec) == (RETRY, GPA + MiB2)


def test_map_gpa_einval_from_the_vmm_is_invalid_operand_with_the_gpa():
    """The VMM answers EINVAL: INVALID_OPERAND, R11 = the GPA not yet mapped."""
    rec = call(tdvmcall("map_gpa", GPA, MiB2), vmm={"map_gpa_results": ["einval"]})
    assert out(rec) == (INVALID, GPA)


def test_map_gpa_eagain_under_v616_is_invalid_operand():
    """As first merged (v6.16), any VMM error is INVALID_OPERAND."""
    rec = call(tdvmcall("map_gpa", GPA, MiB2), vmm={"map_gpa_results": ["eagain"]},
               kvm={"tdvmcall_abi": "v6.16"})
    assert out(rec) == (INVALID, GPA)


def test_map_gpa_stops_with_retry_when_an_interrupt_is_pending_after_a_chunk():
    """A timer interrupt posted while the VMM maps chunk 1: RETRY, R11 = the next GPA."""
    rec = call(tdvmcall("map_gpa", GPA, 3 * MiB2), timer_hz=200_000)
    assert len(rec["exits"]) == 1
    assert out(rec) == (RETRY, GPA + MiB2)


def test_map_gpa_stops_with_retry_when_an_nmi_is_pending_after_a_chunk():
    """An NMI injected while the VMM maps chunk 1 (KVM_REQ_NMI): RETRY, R11 = the next GPA."""
    rec = call(tdvmcall("map_gpa", GPA, 3 * MiB2), interrupts={"nmi_hz": 200_000})
    assert len(rec["exits"]) == 1
    assert out(rec) == (RETRY, GPA + MiB2)


# --- GetQuote ------------------------------------------------------------------------------
def test_get_quote_exits_to_userspace_with_the_stripped_gpa():
    """KVM_EXIT_TDX nr GetQuote with GPA (shared bit stripped) and size; R10 = VMM status."""
    rec = call(tdvmcall("get_quote", SHARED | 0x5000, 0x2000))
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_TDX"
    assert (e["tdx"]["nr"], e["tdx"]["gpa"], e["tdx"]["size"]) == (
        arch.TDVMCALL_GET_QUOTE, 0x5000, 0x2000)
    assert rec["regs_out"]["r10"] == SUCCESS


def test_get_quote_returns_the_status_the_vmm_sets():
    """The status in R10 is the VMM's (here SUBFUNC_UNSUPPORTED, KVM's default)."""
    rec = call(tdvmcall("get_quote", SHARED | 0x5000, 0x1000),
               vmm={"get_quote_ret": UNSUPPORTED})
    assert rec["regs_out"]["r10"] == UNSUPPORTED


def test_get_quote_with_a_private_buffer_is_invalid_operand():
    """A private buffer GPA: INVALID_OPERAND, no exit."""
    rec = call(tdvmcall("get_quote", 0x5000, 0x1000))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


# --- ReportFatalError ----------------------------------------------------------------------
def test_report_fatal_error_is_a_system_event_with_16_registers():
    """KVM_EXIT_SYSTEM_EVENT type TDX_FATAL (7), ndata 16: RAX = vp_enter_ret, RCX = the
    bitmap, RDX, RBX, RSP = RBP = 0, RSI, RDI, R8..R15."""
    rec = call(tdvmcall("report_fatal_error", 0x1111, 0x2222, 0x3333, 0x4444,
                        rdx=2, rbx=3, rsi=6, rdi=7, r8=8, r9=9))
    e = rec["exits"][0]
    assert e["exit_reason"] == "KVM_EXIT_SYSTEM_EVENT"
    assert e["system_event"]["type"] == arch.KVM_SYSTEM_EVENT_TDX_FATAL == 7
    assert e["system_event"]["ndata"] == 16
    assert e["system_event"]["data"] == [arch.EXIT_REASON_TDCALL, 0xFFCC, 2, 3, 0, 0, 6, 7,
                                         8, 9, 0, arch.TDVMCALL_REPORT_FATAL_ERROR,
                                         0x1111, 0x2222, 0x3333, 0x4444]


# --- SetupEventNotifyInterrupt -------------------------------------------------------------
@pytest.mark.parametrize("vector", [32, 255])
def test_setup_event_notify_interrupt_exits_with_the_vector(vector):
    """Vector 32..255: KVM_EXIT_TDX with the vector; R10 = the VMM's status."""
    rec = call(tdvmcall("setup_event_notify_interrupt", vector))
    e = rec["exits"][0]
    assert e["tdx"]["nr"] == arch.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT
    assert e["tdx"]["vector"] == vector
    assert rec["regs_out"]["r10"] == SUCCESS


@pytest.mark.parametrize("vector", [0, 31, 256])
def test_setup_event_notify_interrupt_bad_vector_is_invalid_operand(vector):
    """A vector outside 32..255: INVALID_OPERAND, no exit."""
    rec = call(tdvmcall("setup_event_notify_interrupt", vector))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


def test_setup_event_notify_interrupt_is_unsupported_as_first_merged():
    """The first merged KVM (6.16-rc1..rc5) did not handle it: handle_tdvmcall's default,
    SUBFUNC_UNSUPPORTED."""
    rec = call(tdvmcall("setup_event_notify_interrupt", 40), kvm={"tdvmcall_abi": "v6.16-rc1"})
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == UNSUPPORTED


def test_setup_event_notify_interrupt_is_forwarded_by_the_v616_release():
    """Merge 5383fc05 (6.16-rc6) added tdx_setup_event_notify_interrupt: KVM_EXIT_TDX."""
    rec = call(tdvmcall("setup_event_notify_interrupt", 40), kvm={"tdvmcall_abi": "v6.16"})
    assert rec["exits"][0]["tdx"]["vector"] == 40


# --- GetTdVmCallInfo -----------------------------------------------------------------------
def test_get_td_vm_call_info_leaf_0_zeroes_r11_to_r14_in_the_kernel():
    """Leaf 0: SUCCESS, R11..R14 = 0, no exit."""
    rec = call(tdvmcall("get_td_vm_call_info", 0, 5, 6, 7))
    assert rec["exits"] == []
    assert rec["regs_out"] == {"r10": SUCCESS, "r11": 0, "r12": 0, "r13": 0, "r14": 0,
                               "r15": 7}


def test_get_td_vm_call_info_leaf_1_returns_the_vmm_bitmaps():
    """Leaf 1: KVM_EXIT_TDX; R11..R14 = what the VMM filled."""
    rec = call(tdvmcall("get_td_vm_call_info", 1), vmm={"tdvmcall_info": [2, 3, 4, 5]})
    assert rec["exits"][0]["tdx"]["nr"] == arch.TDVMCALL_GET_TD_VM_CALL_INFO
    o = rec["regs_out"]
    assert (o["r10"], o["r11"], o["r12"], o["r13"], o["r14"]) == (SUCCESS, 2, 3, 4, 5)


def test_get_td_vm_call_info_other_leaf_is_invalid_operand():
    """Leaf 2: INVALID_OPERAND."""
    rec = call(tdvmcall("get_td_vm_call_info", 2))
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == INVALID


# --- anything else -------------------------------------------------------------------------
@pytest.mark.parametrize("leaf", [0, 54, 65, 0x10005, 0x12345])
def test_other_sub_functions_are_subfunc_unsupported(leaf):
    """WBINVD, PCONFIG, Service and unknown leaves: SUBFUNC_UNSUPPORTED, R11 unchanged."""
    rec = call(tdvmcall(leaf))
    assert rec["exits"] == []
    assert out(rec) == (UNSUPPORTED, leaf)


# --- KVM hypercalls (R10 != 0) -------------------------------------------------------------
def test_kvm_hypercall_vapic_poll_irq_returns_0_in_r10():
    """KVM_HC_VAPIC_POLL_IRQ (1): R10 = 0, in the kernel."""
    rec = call({"op": "tdvmcall", "r10": 1})
    assert rec["kvm"] == "in_kernel"
    assert rec["regs_out"]["r10"] == 0


@pytest.mark.parametrize("nr", [3, 77])
def test_unknown_kvm_hypercall_returns_minus_kvm_enosys(nr):
    """An unknown hypercall: R10 = -KVM_ENOSYS (-1000) as u64 (the PV ones: tests/
    test_kvm_hypercall.py)."""
    rec = call({"op": "tdvmcall", "r10": nr})
    assert rec["regs_out"]["r10"] == (-1000) & U64


def test_kvm_hc_map_gpa_range_hypercall_exits_with_its_arguments():
    """R10 = KVM_HC_MAP_GPA_RANGE: args from R11 (gpa), R12 (npages), R13 (attrs); R10 = the
    VMM's return value."""
    rec = call({"op": "tdvmcall", "r10": 12, "r11": 0x200000, "r12": 4, "r13": 0x10})
    e = rec["exits"][0]
    assert e["hypercall"]["nr"] == 12
    assert e["hypercall"]["args"][:3] == [0x200000, 4, 0x10]
    assert rec["regs_out"]["r10"] == 0


def test_kvm_hc_map_gpa_range_hypercall_unaligned_is_minus_kvm_einval():
    """An unaligned GPA: -KVM_EINVAL without an exit."""
    rec = call({"op": "tdvmcall", "r10": 12, "r11": 0x200010, "r12": 4})
    assert rec["exits"] == []
    assert rec["regs_out"]["r10"] == (-22) & U64


# --- costs: a TD round trip each; userspace-bound ones a KVM_RUN round trip too -------------
@pytest.mark.parametrize(("step", "exit_name"), [
    (tdvmcall("get_quote", SHARED | 0x5000, 0x1000), "KVM_EXIT_TDX"),
    (tdvmcall("setup_event_notify_interrupt", 40), "KVM_EXIT_TDX"),
    (tdvmcall("get_td_vm_call_info", 1), "KVM_EXIT_TDX"),
    (tdvmcall("report_fatal_error"), "KVM_EXIT_SYSTEM_EVENT"),
    (tdvmcall("map_gpa", GPA, 0x1000), "KVM_EXIT_HYPERCALL"),
    (tdvmcall("io", 1, 1, 0x80, 0), "KVM_EXIT_IO"),
    (tdvmcall("mmio", 4, 1, SHARED | 0xFEB00000, 0), "KVM_EXIT_MMIO"),
])
def test_userspace_bound_calls_cost_a_kvm_run_round_trip(step, exit_name):
    """One TD exit, one return to the VMM (vcpu_put, host_state_reload), one new KVM_RUN."""
    result, _ = run_program([step], vmm={"fatal_error": "resume"})
    m = result.metrics
    assert m[f"userspace_exits.reason.{exit_name}"] == 1
    assert m["userspace_exits"] == 1
    assert m["vcpu_put.cause.kvm_run_return"] == 1
    assert m["host_state_reload"] == 2  # this return, then the final HLT's put
    assert m["exits"] == 2  # the call and the final HLT


def test_in_kernel_calls_stay_in_kvm_run():
    """CPUID, MSR, hypercall: TD round trips only, no return to userspace."""
    result, calls = run_program([{"op": "cpuid"}, {"op": "rdmsr", "index": 0x1A0},
                                 {"op": "tdvmcall", "r10": 1}])
    assert result.metrics["userspace_exits"] == 0
    assert [c["rax"] for c in calls] == [0, 0, 0]


# --- the register ABI ----------------------------------------------------------------------
def test_registers_not_exposed_reach_kvm_as_zero_and_come_back_unchanged():
    """RCX without R15: an OUT's data reaches userspace as 0; the guest keeps its R15."""
    rec = call(tdvmcall("io", 1, 1, 0x3F8, 0x41, rcx=0x7FCC))
    assert rec["exits"][0]["io"]["data"] == 0
    assert "r15" not in rec["regs_in"]
    assert rec["regs_out"]["r15"] == 0x41


def test_r10_r11_not_exposed_reach_kvm_as_a_ghci_leaf_0():
    """Without R10/R11 exposed KVM sees leaf 0: SUBFUNC_UNSUPPORTED (the guest's R10/R11
    are not written back either)."""
    rec = call(tdvmcall("cpuid", 1, rcx=0xF3CC))
    assert rec["regs_in"].get("r11") is None
    assert out(rec) == (0, arch.TDVMCALL_CPUID)


def test_exposing_rax_makes_the_tdcall_fail_in_the_module():
    """A bitmap with RAX set: TDCALL returns TDX_OPERAND_INVALID | RCX, no TD exit."""
    result, calls = run_program([tdvmcall("cpuid", 1, rcx=0xFFCD)])
    assert calls[0]["rax"] == 0xC000010000000001
    assert result.metrics.get("exits.reason.CPUID", 0) == 0


# --- the shipped scenario ------------------------------------------------------------------
def test_every_subfunction_scenario_returns_what_its_header_says():
    """scenarios/ghci_every_subfunction.toml: each call's status (and the exits it names)
    match the expectations listed in the file's header."""
    import re
    from pathlib import Path

    from tdsim.scenario import load_scenario

    path = Path("scenarios/ghci_every_subfunction.toml")
    expected = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#\s*(\d+) .*?-> (R10 = \S+|[A-Z_]+)(.*)", line)
        if m:
            expected[int(m[1])] = (m[2], m[3])
    result = run(load_scenario(path))
    calls = result.details["calls"]["td0.vcpu0"]
    assert len(calls) == len(expected) == 26
    assert result.violations == []
    for rec in calls:
        status, rest = expected[rec["step"]]
        if status.startswith("R10"):
            assert rec["regs_out"]["r10"] == int(status.split()[-1], 0) & U64, rec
        else:
            assert rec["status"] == status, rec
        exit_names = re.findall(r"KVM_EXIT_[A-Z0-9_]+", rest)
        assert {e["exit_reason"] for e in rec["exits"]} == set(exit_names), rec


def test_map_gpa_chunks_go_back_to_userspace_without_entering_the_td():
    """Between MapGPA chunks the completion callback returns 0: KVM_RUN goes straight back
    to the VMM, with no TD entry until the last chunk is done."""
    from tdsim.trace import Tracer

    tracer = Tracer(kinds=["kvm_entry", "kvm_exit", "userspace_exit"])
    scenario = scenario_from_dict({
        "sim": {"duration_us": 3000, "seed": 1}, "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"program": [
            tdvmcall("map_gpa", GPA, 5 * 1024 * 1024)]}}],
    }, name="<timeline>")
    run(scenario, tracer=tracer)
    log = [(kind, f.get("reason", "")) for _t, kind, _c, _v, f in tracer.sorted_events()]
    assert log == [
        ("kvm_entry", ""), ("kvm_exit", "TDCALL"),
        ("userspace_exit", "KVM_EXIT_HYPERCALL"),
        ("userspace_exit", "KVM_EXIT_HYPERCALL"),
        ("userspace_exit", "KVM_EXIT_HYPERCALL"),
        ("kvm_entry", ""), ("kvm_exit", "HLT"),
    ]


def test_ipi_step_posts_the_vector_to_the_destination_vcpu():
    """An ipi step is WRMSR(x2APIC ICR) with the destination in bits 63:32: SUCCESS, and
    the destination halted vCPU is woken by the posted vector (its next step runs)."""
    scenario = scenario_from_dict({
        "sim": {"duration_us": 500, "seed": 1}, "host": {"cpus": 3, "tick_hz": 0},
        "vm": [{"vcpus": 2, "pin": [1, 2], "workload": {"program": [
            {"op": "hlt", "vcpus": [1]},
            {"op": "cpuid", "name": "woken", "vcpus": [1]},
            {"op": "compute", "us": 20, "vcpus": [0]},
            {"op": "ipi", "vector": 0xFD, "dest": 1, "vcpus": [0]}]}}],
    }, name="<ipi>")
    result = run(scenario)
    sender = result.details["calls"]["td0.vcpu0"]
    receiver = result.details["calls"]["td0.vcpu1"]
    assert sender[0]["regs_in"]["r12"] == 0x830
    assert sender[0]["regs_in"]["r13"] == (1 << 32) | 0xFD
    assert sender[0]["status"] == "SUCCESS"
    assert [c["name"] for c in receiver] == ["hlt", "woken"]
    assert receiver[1]["t_ns"] > sender[0]["t_ns"]
    assert result.metrics["vm.td0.vcpu.1.ipi.received"] == 1
    assert result.metrics["vm.td0.vcpu.0.ipi.sent"] == 1


def test_ipi_to_others_reaches_every_other_vcpu():
    """shorthand = others: every vCPU but the sender receives the vector."""
    scenario = scenario_from_dict({
        "sim": {"duration_us": 300, "seed": 1}, "host": {"cpus": 4, "tick_hz": 0},
        "vm": [{"vcpus": 3, "pin": [1, 2, 3], "workload": {"program": [
            {"op": "ipi", "vector": 0xFB, "shorthand": "others", "vcpus": [0]}]}}],
    }, name="<ipi>")
    m = run(scenario).metrics
    assert m.get("vm.td0.vcpu.0.ipi.received", 0) == 0
    assert m["vm.td0.vcpu.1.ipi.received"] == m["vm.td0.vcpu.2.ipi.received"] == 1
