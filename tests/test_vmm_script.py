"""The scriptable VMM: per-call answers (any hypercall.ret, "keep", data, errors, registers),
kvm_run before and after the answer, in-kernel devices that answer reads, and the MapGPA
completion of each generation against tdx_complete_vmcall_map_gpa."""

import pytest

from tests.scripted import (
    INVALID,
    RETRY,
    SHARED,
    SUCCESS,
    UNSUPPORTED,
    call,
    neg,
    out,
    run_program,
    tdvmcall,
)

GPA = SHARED | 0x100000000
MiB2 = 2 << 20
EAGAIN, EINVAL = 11, 22


def map_gpa(size=MiB2, **extra):
    return tdvmcall("map_gpa", GPA, size, **extra)


# --- MapGPA completion, per generation ---------------------------------------------------
@pytest.mark.parametrize(("ret", "expected"), [
    (EAGAIN, (RETRY, GPA)),            # positive EAGAIN -> RETRY, R11 = map_gpa_next
    (EINVAL, (INVALID, GPA)),          # positive EINVAL -> INVALID_OPERAND
])
def test_current_map_gpa_takes_positive_errnos(ret, expected):
    """Today's tdx_complete_vmcall_map_gpa compares hypercall.ret with positive EAGAIN and
    EINVAL."""
    rec = call(map_gpa(vmm={"ret": ret}))
    assert out(rec) == expected
    assert rec["regs_written"] == ["r10", "r11"]


@pytest.mark.parametrize("ret", [neg(EAGAIN), neg(EINVAL), 1, 0x1234])
def test_current_map_gpa_fails_kvm_run_for_any_other_value(ret):
    """Any other nonzero ret: the completion returns -EINVAL, KVM_RUN fails, nothing is
    written (QEMU stops the vCPU: the call never returns)."""
    r, calls = run_program([map_gpa(vmm={"ret": ret}), {"op": "cpuid"}])
    assert (calls[0]["kvm"], calls[0]["kvm_run"]) == ("kvm_run_error", -22)
    assert "regs_out" not in calls[0]
    assert len(calls) == 1
    assert r.metrics["vcpu_stopped"] == 1


@pytest.mark.parametrize("abi", ["v6.16", "v6.16-rc1"])
@pytest.mark.parametrize("ret", [EAGAIN, neg(EAGAIN), 0x1234])
def test_v616_map_gpa_any_nonzero_ret_is_invalid_operand(abi, ret):
    """v6.16 (and before): `if (vcpu->run->hypercall.ret)` -> INVALID_OPERAND, R11 = the
    GPA not yet mapped."""
    rec = call(map_gpa(vmm={"ret": ret}), kvm={"tdvmcall_abi": abi})
    assert out(rec) == (INVALID, GPA)


def test_map_gpa_answers_per_exit_and_keep():
    """A list answers each chunk's exit (the last repeating); "keep" leaves KVM's preset 0,
    which is success.  After the last chunk nothing is written: R10 = 0 and R11 = the
    leaf as the guest passed them."""
    rec = call(map_gpa(3 * MiB2, vmm={"ret": [0, "keep"]}))
    assert [e["hypercall"]["ret"] for e in rec["exits"]] == [0, 0, 0]
    assert out(rec) == (SUCCESS, 0x10001)
    assert rec["regs_written"] == []


def test_map_gpa_results_accepts_raw_values():
    """[vmm] map_gpa_results: names or numbers; the second chunk gets EAGAIN -> RETRY."""
    rec = call(map_gpa(3 * MiB2), vmm={"map_gpa_results": ["success", 11]})
    assert out(rec) == (RETRY, GPA + MiB2)


def test_kvm_run_before_and_after_the_vmm_answer():
    """Each exit records kvm_run as the VMM left it and, in before_vmm, as KVM filled it
    (__tdx_map_gpa presets ret = 0)."""
    rec = call(map_gpa(vmm={"ret": EAGAIN}))
    e = rec["exits"][0]
    assert e["before_vmm"]["ret"] == 0
    assert e["hypercall"]["ret"] == EAGAIN
    assert e["before_vmm"]["args"][:3] == [GPA & ~SHARED, 512, 0]


# --- KVM_EXIT_TDX answers --------------------------------------------------------------
def test_get_quote_keep_leaves_kvms_default_status():
    """tdx_get_quote presets get_quote.ret = SUBFUNC_UNSUPPORTED; tdx_complete_simple puts
    whatever ret holds in R10."""
    rec = call(tdvmcall("get_quote", SHARED | 0x5000, 0x1000, vmm={"ret": "keep"}))
    assert rec["exits"][0]["before_vmm"]["ret"] == UNSUPPORTED
    assert rec["regs_out"]["r10"] == UNSUPPORTED
    assert rec["regs_written"] == ["r10"]


def test_get_td_vm_call_info_leaf_1_takes_the_calls_registers():
    """tdx_complete_get_td_vm_call_info writes R10..R14 from the run fields."""
    rec = call(tdvmcall("get_td_vm_call_info", 1, vmm={"regs": [1, 2, 3, 4], "ret": 5}))
    o = rec["regs_out"]
    assert (o["r10"], o["r11"], o["r12"], o["r13"], o["r14"]) == (5, 1, 2, 3, 4)
    assert rec["regs_written"] == ["r10", "r11", "r12", "r13", "r14"]


def test_fatal_error_per_call_stop_false_resumes():
    """A fatal-error report whose step says stop = false: the VMM re-runs the vCPU; KVM wrote
    nothing (no completion), so the guest sees R10 = 0, R11 = 0x10003 (tdx_vm_test's
    verify_report_fatal_error relies on it)."""
    _r, calls = run_program([tdvmcall("report_fatal_error", vmm={"stop": False}),
                            {"op": "cpuid"}])
    assert out(calls[0]) == (SUCCESS, 0x10003)
    assert calls[0]["regs_written"] == []
    assert len(calls) == 2


# --- IO / MMIO ---------------------------------------------------------------------------
def test_mmio_read_data_per_call_and_kvm_leaves_mmio_data_unwritten():
    """tdx_emulate_mmio does not write mmio.data for a read exit: KVM's view of the first
    exit has no data; the second shows what the first exit's answer left there."""
    _, calls = run_program([tdvmcall("mmio", 4, 0, SHARED | 0x1000, vmm={"data": 0xAB}),
                            tdvmcall("mmio", 2, 0, SHARED | 0x1000, vmm={"data": 0xCDEF})])
    assert "data" not in calls[0]["exits"][0]["before_vmm"]
    assert calls[1]["exits"][0]["before_vmm"]["data"] == 0xAB
    assert [out(c)[1] for c in calls] == [0xAB, 0xCDEF]
    assert calls[1]["regs_written"] == ["r11"]


@pytest.mark.parametrize(("space", "step"), [
    ("pio", tdvmcall("io", 2, 0, 0x510)),
    ("mmio", tdvmcall("mmio", 2, 0, SHARED | 0xFED00010)),
])
def test_in_kernel_device_answers_a_read_without_an_exit(space, step):
    """kvm_io_bus_read on KVM_PIO_BUS / KVM_MMIO_BUS succeeds: R11 = the value (size bytes),
    no userspace exit."""
    base = 0x510 if space == "pio" else 0xFED00000
    rec = call(step, vmm={"device": [{"space": space, "base": base, "size": 0x100,
                                      "read_value": 0x12345, "in_kernel_read": True}]})
    assert rec["kvm"] == "in_kernel"
    assert out(rec) == (SUCCESS, 0x2345)


@pytest.mark.parametrize(("r12", "r13", "ok"), [
    (0x1_0000_0004, 0, True),                   # (int)size = 4
    (4, 0xFFFF_FFFF_0000_0001, True),           # (int)write = 1
    (0xFFFF_FFFF, 0, False),                    # (int)size = -1
    (4, 0x1_0000_0002, False),                  # (int)write = 2
])
def test_mmio_size_and_direction_are_c_ints(r12, r13, ok):
    """tdx_emulate_mmio assigns R12, R13 to `int size, write`: only the low 32 bits
    count."""
    rec = call(tdvmcall("mmio", r12, r13, SHARED | 0x1000, 7))
    assert (rec["kvm"] == "userspace") == ok
    assert rec["regs_out"]["r10"] == (SUCCESS if ok else INVALID)


def test_io_out_writes_nothing_back():
    """An OUT's completion (tdx_complete_pio_out) writes no register."""
    rec = call(tdvmcall("io", 1, 1, 0x80, 0x55))
    assert rec["regs_written"] == []
    assert out(rec) == (SUCCESS, 30)


def test_written_as_zero_differs_from_not_written():
    """GetTdVmCallInfo leaf 0 writes R11..R14 = 0 and R10 = SUCCESS: written as 0."""
    rec = call(tdvmcall("get_td_vm_call_info", 0, 5, 6, 7))
    assert rec["regs_written"] == ["r10", "r11", "r12", "r13", "r14"]
    assert out(rec) == (SUCCESS, 0)


def test_io_port_is_16_bits_and_io_exits_counts_invalid_calls():
    """tdx_emulate_io: ++io_exits before the checks; the port is the emulator's unsigned
    short (R14 & 0xffff)."""
    r, calls = run_program([tdvmcall("io", 1, 1, 0x10050, 1), tdvmcall("io", 3, 1, 0x50, 1)])
    assert calls[0]["exits"][0]["io"]["port"] == 0x50
    assert r.metrics["io_exits"] == 2
