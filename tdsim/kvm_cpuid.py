"""KVM's copy of the guest CPUID (arch/x86/kvm/cpuid.c): the table the VMM gave with
KVM_SET_CPUID2, the lookup a CPUID TDVMCALL goes through, and what KVM derives from it.

``tdx_emulate_cpuid`` calls ``kvm_cpuid(..., exact_only = false)``: a leaf the table lacks is
not simply zero.  ``kvm_find_cpuid_entry2`` returns the first entry of the function whose
index matches, or that has no KVM_CPUID_FLAG_SIGNIFCANT_INDEX (such an entry answers every
sub-leaf); a function above the maximum of its class (basic, hypervisor range, extended,
Centaur) is redirected by ``get_out_of_range_cpuid_entry`` to the maximum basic leaf with the
same sub-leaf -- Intel behaviour, unless leaf 0 names an AMD or Hygon vendor.

Derived here, as KVM derives them after KVM_SET_CPUID2: the guest MAXPHYADDR
(``cpuid_query_maxphyaddr``), the guest's feature bits that the emulated MSRs and x2APIC
consult (``guest_cpu_cap_has``), and the PV feature bits of the KVM leaf
(``kvm_find_kvm_cpuid_features``) that ``guest_pv_has`` reads when
KVM_CAP_ENFORCE_PV_FEATURE_CPUID is enabled.

Simplifications: the runtime-updated bits (``kvm_update_cpuid_runtime``: OSXSAVE, APIC, OSPKE,
XSAVE sizes) and the leaf-specific tweaks after the lookup (TSX in 7.0, which depends on
TSX_CTRL, an MSR a TD does not have; Hyper-V's invariant-TSC suppression) are not applied;
``guest_cpu_cap_has`` reads the table's bit, not KVM's intersection with what it supports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
# GPAW of tdsim's TD (4-level EPT, shared bit 47): the MAXPHYADDR assumed when the VMM's table
# has no extended leaves at all (QEMU always gives a TD 0x80000008)
TD_GPAW = 48
# KVM's fallback when 0x80000008 is missing (cpuid_query_maxphyaddr)
DEFAULT_MAXPHYADDR = 36
KVM_CPUID_SIGNATURE = 0x40000000
KVM_CPUID_FEATURES = 1
KVM_SIGNATURE = (0x4B4D564B, 0x564B4D56, 0x4D)   # "KVMKVMKVM\0\0\0" in EBX, ECX, EDX
# include/uapi/asm/kvm_para.h feature bits (CPUID 0x40000001 EAX)
KVM_FEATURE_PV_UNHALT = 7
KVM_FEATURE_PV_SEND_IPI = 11
KVM_FEATURE_POLL_CONTROL = 12
KVM_FEATURE_PV_SCHED_YIELD = 13
_AMD = (0x68747541, 0x444D4163, 0x69746E65)      # "AuthenticAMD" (EBX, ECX, EDX)
_HYGON = (0x6F677948, 0x656E6975, 0x6E65476E)    # "HygonGenuine"
# X86_FEATURE_* as (leaf, sub-leaf, register 0..3 = EAX..EDX, bit)
X86_FEATURE_XMM3 = (1, 0, 2, 0)
X86_FEATURE_X2APIC = (1, 0, 2, 21)
X86_FEATURE_TSC_DEADLINE_TIMER = (1, 0, 2, 24)
X86_FEATURE_ARCH_CAPABILITIES = (7, 0, 3, 29)


def cpuid_function_is_indexed(function: int) -> bool:
    """cpuid_function_is_indexed (arch/x86/include/asm/cpuid/api.h): the leaves whose
    sub-leaf selects the answer; a VMM sets KVM_CPUID_FLAG_SIGNIFCANT_INDEX on them."""
    return function in (4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F,
                        0x24, 0x8000001D)


@dataclass(frozen=True, slots=True)
class KvmCpuidEntry2:
    """struct kvm_cpuid_entry2 (flags reduced to the significant-index bit)."""

    function: int
    index: int
    significant_index: bool
    eax: int
    ebx: int
    ecx: int
    edx: int


Regs4 = tuple[int, int, int, int]
_ZERO: Regs4 = (0, 0, 0, 0)


class KvmCpuid:
    """vcpu->arch.cpuid_entries of a VM's vCPUs (the VMM sets the same table on each)."""

    def __init__(self, entries: Sequence[KvmCpuidEntry2]) -> None:
        self.entries = tuple(entries)
        self.by_function: dict[int, list[KvmCpuidEntry2]] = {}
        for e in self.entries:
            self.by_function.setdefault(e.function, []).append(e)
        self.maxphyaddr = self.cpuid_query_maxphyaddr()
        self.pv_features = self.kvm_find_kvm_cpuid_features()

    # --- lookups ---------------------------------------------------------------------------
    def kvm_find_cpuid_entry2(self, function: int, index: int) -> KvmCpuidEntry2 | None:
        """The first entry of `function` that has no significant index or whose index is
        `index` (cpuid_entry2_find)."""
        for e in self.by_function.get(function, ()):
            if not e.significant_index or e.index == index:
                return e
        return None

    def kvm_find_cpuid_entry(self, function: int) -> KvmCpuidEntry2 | None:
        """kvm_find_cpuid_entry (KVM_CPUID_INDEX_NOT_SIGNIFICANT): the first entry of
        `function`."""
        found = self.by_function.get(function)
        return found[0] if found else None

    def get_out_of_range_cpuid_entry(self, function: int,
                                     index: int) -> tuple[KvmCpuidEntry2 | None, int]:
        """get_out_of_range_cpuid_entry: Intel CPUs answer a leaf above the maximum of its
        class with the maximum basic leaf (the sub-leaf kept).  Returns the entry (None:
        zeros) and the function KVM then uses."""
        basic = self.kvm_find_cpuid_entry(0)
        if basic is None:
            return None, function
        vendor = (basic.ebx, basic.ecx, basic.edx)
        if vendor in (_AMD, _HYGON):
            return None, function
        if 0x40000000 <= function <= 0x4FFFFFFF:
            klass = self.kvm_find_cpuid_entry(function & 0xFFFFFF00)
        elif function >= 0xC0000000:
            klass = self.kvm_find_cpuid_entry(0xC0000000)
        else:
            klass = self.kvm_find_cpuid_entry(function & 0x80000000)
        if klass is not None and function <= klass.eax:
            return None, function
        return self.kvm_find_cpuid_entry2(basic.eax, index), basic.eax

    def kvm_cpuid(self, eax: int, ecx: int) -> Regs4:
        """kvm_cpuid(vcpu, &eax, &ebx, &ecx, &edx, exact_only = false), as
        tdx_emulate_cpuid calls it: leaf `eax`, sub-leaf `ecx` (both u32)."""
        if not self.entries:
            return _ZERO
        function, index = eax, ecx
        entry = self.kvm_find_cpuid_entry2(function, index)
        if entry is None:
            entry, function = self.get_out_of_range_cpuid_entry(function, index)
        if entry is not None:
            return entry.eax, entry.ebx, entry.ecx, entry.edx
        if function in (0xB, 0x1F):
            # a missing sub-leaf of the topology leaves: ECX echoes the sub-leaf, EDX (the
            # x2APIC ID) comes from sub-leaf 1
            sub1 = self.kvm_find_cpuid_entry2(function, 1)
            if sub1 is not None:
                return 0, 0, index & 0xFF, sub1.edx
        return _ZERO

    # --- what KVM derives -----------------------------------------------------------------
    def guest_cpu_cap_has(self, feature: tuple[int, int, int, int]) -> bool:
        """guest_cpu_cap_has: the feature's bit in the table's entry (0 if none)."""
        leaf, sub, reg, bit = feature
        entry = self.kvm_find_cpuid_entry2(leaf, sub)
        if entry is None:
            return False
        return bool((entry.eax, entry.ebx, entry.ecx, entry.edx)[reg] >> bit & 1)

    def cpuid_query_maxphyaddr(self) -> int:
        """cpuid_query_maxphyaddr: 0x80000008 EAX[7:0] if 0x80000000 reaches it, else 36.
        A table without any extended leaf stands for the CPUID QEMU gives a TD: the TD's
        GPAW (48)."""
        ext = self.kvm_find_cpuid_entry(0x80000000)
        if ext is None:
            return TD_GPAW if not any(f >= 0x80000000 for f in self.by_function) \
                else DEFAULT_MAXPHYADDR
        if ext.eax < 0x80000008:
            return DEFAULT_MAXPHYADDR
        leaf = self.kvm_find_cpuid_entry(0x80000008)
        return leaf.eax & 0xFF if leaf is not None else DEFAULT_MAXPHYADDR

    def kvm_find_kvm_cpuid_features(self) -> int:
        """kvm_find_kvm_cpuid_features: EAX of the KVM leaf (base + 1) after the hypervisor
        base whose signature is "KVMKVMKVM"; 0 without one."""
        for base in range(KVM_CPUID_SIGNATURE, 0x40010000, 0x100):
            entry = self.kvm_find_cpuid_entry(base)
            if entry is not None and (entry.ebx, entry.ecx, entry.edx) == KVM_SIGNATURE:
                features = self.kvm_find_cpuid_entry(base | KVM_CPUID_FEATURES)
                return features.eax if features is not None else 0
        return 0


def guest_pv_has(vm: Any, feature: int) -> bool:
    """guest_pv_has (cpuid.h): every PV feature unless the VMM enabled
    KVM_CAP_ENFORCE_PV_FEATURE_CPUID; then the feature's bit of the KVM CPUID leaf."""
    if not vm.enforce_pv_feature_cpuid:
        return True
    return bool(vm.cpuid.pv_features >> feature & 1)
