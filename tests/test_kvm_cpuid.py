"""CPUID TDVMCALLs against cpuid.c: tdx_emulate_cpuid calls kvm_cpuid(..., exact_only =
false), so the answer for a leaf the VMM's table lacks depends on where the leaf lies."""

import pytest

from tdsim.kvm_cpuid import KvmCpuid, KvmCpuidEntry2
from tests.scripted import SUCCESS, call

INTEL = {"leaf": 0, "eax": 0x1F, "ebx": 0x756E6547, "ecx": 0x6C65746E, "edx": 0x49656E69}
AMD = {"leaf": 0, "eax": 0x10, "ebx": 0x68747541, "ecx": 0x444D4163, "edx": 0x69746E65}


def regs(leaf, subleaf=0, table=(), **vmm):
    """R12..R15 after a CPUID TDVMCALL of (leaf, subleaf)."""
    rec = call({"op": "cpuid", "leaf": leaf, "subleaf": subleaf},
               vmm={"cpuid": list(table), **vmm})
    assert rec["regs_out"]["r10"] == SUCCESS
    return tuple(rec["regs_out"][r] for r in ("r12", "r13", "r14", "r15"))


def test_registers_written_are_r12_to_r15_only():
    """tdx_emulate_cpuid writes R12..R15 (EAX..EDX); R10 and R11 go back as the guest gave
    them (SUCCESS and the leaf number 10)."""
    rec = call({"op": "cpuid", "leaf": 1}, vmm={"cpuid": [{"leaf": 1, "eax": 5}]})
    assert rec["regs_written"] == ["r12", "r13", "r14", "r15"]
    assert rec["regs_out"]["r11"] == 10


def test_leaf_and_subleaf_are_truncated_to_32_bits():
    """eax = (u32)R12, ecx = (u32)R13."""
    assert regs((1 << 32) | 1, table=[{"leaf": 1, "eax": 7}])[0] == 7


def test_an_entry_without_a_significant_index_answers_every_subleaf():
    """cpuid_entry2_find: an entry without KVM_CPUID_FLAG_SIGNIFCANT_INDEX matches any
    index (leaf 2 is not indexed, so the VMM leaves the flag off)."""
    assert regs(2, 5, table=[{"leaf": 2, "eax": 9}])[0] == 9


def test_an_indexed_leaf_answers_only_its_own_subleaf():
    """Leaf 7 is one KVM indexes (cpuid_function_is_indexed): subleaf 1 of a table that has
    only 7.0 is missing -- inside the basic range, so zeros."""
    table = [INTEL, {"leaf": 7, "subleaf": 0, "ebx": 3}]
    assert regs(7, 0, table)[1] == 3
    assert regs(7, 1, table) == (0, 0, 0, 0)


def test_significant_index_can_be_turned_off():
    """significant_index = false makes 7.0 answer 7.1 too."""
    table = [INTEL, {"leaf": 7, "subleaf": 0, "ebx": 3, "significant_index": False}]
    assert regs(7, 1, table)[1] == 3


def test_a_leaf_above_the_basic_maximum_reads_the_maximum_basic_leaf():
    """get_out_of_range_cpuid_entry (Intel vendor): 0x30 > leaf 0's EAX (0x1f), so KVM
    answers with the entry of 0x1f and the original subleaf."""
    table = [INTEL, {"leaf": 0x1F, "subleaf": 2, "eax": 0xAA, "ecx": 0x202}]
    assert regs(0x30, 2, table) == (0xAA, 0, 0x202, 0)


def test_a_missing_leaf_inside_the_basic_range_reads_zeros():
    """0x10 <= 0x1f: in range, just missing -> zeros."""
    assert regs(0x10, 0, [INTEL, {"leaf": 0x1F, "eax": 1}]) == (0, 0, 0, 0)


def test_amd_vendor_reads_zeros_above_the_range():
    """is_guest_vendor_amd: no redirection, zeros."""
    assert regs(0x30, 0, [AMD, {"leaf": 0x10, "eax": 1}]) == (0, 0, 0, 0)


def test_without_leaf_0_every_missing_leaf_reads_zeros():
    """No basic entry: get_out_of_range_cpuid_entry returns NULL."""
    assert regs(0x30, 0, [{"leaf": 0x1F, "eax": 1}]) == (0, 0, 0, 0)


@pytest.mark.parametrize(("leaf", "klass"), [
    (0x40000010, {"leaf": 0x40000000, "eax": 0x40000001}),   # hypervisor sub-range
    (0x80000009, {"leaf": 0x80000000, "eax": 0x80000008}),   # extended range
])
def test_a_leaf_above_its_class_maximum_reads_the_maximum_basic_leaf(leaf, klass):
    """The class entry (function & 0xffffff00 for 0x4xxxxxxx, else function & 0x80000000)
    bounds the range; above it KVM falls back to the maximum basic leaf."""
    table = [INTEL, klass, {"leaf": 0x1F, "eax": 0x55, "significant_index": False}]
    assert regs(leaf, 0, table)[0] == 0x55


def test_topology_leaf_missing_subleaf_echoes_the_subleaf_and_x2apic_id():
    """kvm_cpuid's 0xB/0x1F special case: no entry for the sub-leaf -> EAX = EBX = 0,
    ECX = subleaf & 0xff, EDX = the x2APIC ID of sub-leaf 1."""
    table = [INTEL, {"leaf": 0xB, "subleaf": 0, "eax": 1},
             {"leaf": 0xB, "subleaf": 1, "eax": 4, "edx": 3}]
    assert regs(0xB, 0x105, table) == (0, 0, 5, 3)


def test_kvm_pv_features_adds_the_kvm_leaves():
    """kvm_pv_features: the VMM puts "KVMKVMKVM" at 0x40000000 and the bits at
    0x40000001 EAX, which kvm_find_kvm_cpuid_features reads."""
    assert regs(0x40000000, kvm_pv_features=0x2880) == (0x40000001, 0x4B4D564B, 0x564B4D56,
                                                         0x4D)
    assert regs(0x40000001, kvm_pv_features=0x2880)[0] == 0x2880


def test_maxphyaddr_comes_from_0x80000008():
    """cpuid_query_maxphyaddr: 0x80000008 EAX[7:0] when 0x80000000 reaches it; 36 when it
    does not; tdsim's TD GPAW (48) for a table without extended leaves."""
    e = KvmCpuidEntry2
    assert KvmCpuid([e(0x80000000, 0, False, 0x80000008, 0, 0, 0),
                     e(0x80000008, 0, False, 0x3034, 0, 0, 0)]).maxphyaddr == 0x34
    assert KvmCpuid([e(0x80000000, 0, False, 0x80000001, 0, 0, 0)]).maxphyaddr == 36
    assert KvmCpuid([]).maxphyaddr == 48


def test_map_gpa_legality_follows_the_guest_maxphyaddr():
    """tdx_map_gpa checks kvm_vcpu_is_legal_gpa on the first and last byte: with CPUID
    0x80000008 EAX[7:0] = 46, GPA 1 << 46 is illegal (INVALID_OPERAND, R11 = the GPA)."""
    vmm = {"cpuid": [{"leaf": 0x80000000, "eax": 0x80000008},
                     {"leaf": 0x80000008, "eax": 46}]}
    rec = call({"op": "tdvmcall", "r11": "map_gpa", "r12": 1 << 46, "r13": 0x1000}, vmm=vmm)
    assert (rec["status"], rec["regs_out"]["r11"]) == ("INVALID_OPERAND", 1 << 46)
