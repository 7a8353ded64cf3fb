"""KVM's MSR emulation behind a TD's RDMSR / WRMSR TDVMCALLs (arch/x86/kvm/vmx/tdx.c with the
generic code of arch/x86/kvm/x86.c, since split into msrs.c).

Path of a guest access, as in the kernel: tdx_handle_exit puts the index in RCX (and EDX:EAX
for a write) -> ``kvm_emulate_rdmsr/wrmsr`` -> the MSR filter (``kvm_msr_allowed``: x2APIC
MSRs are never filtered) -> ``tdx_get_msr/tdx_set_msr`` (FEAT_CTL and MCG_EXT_CTL by TDX
itself; ``tdx_is_read_only_msr``; ``tdx_has_emulated_msr``, which differs by generation for
the x2APIC range) -> ``kvm_get/set_msr_common`` for the MSRs a TD can reach.  A failure exits
to the VMM if it asked for that reason (KVM_CAP_X86_USER_SPACE_MSR: 1 -> INVAL,
KVM_MSR_RET_UNSUPPORTED -> UNKNOWN, KVM_MSR_RET_FILTERED -> FILTER), else
``tdx_complete_emulated_msr`` answers INVALID_OPERAND.  A read's data goes to R11; R10 and
R11 are otherwise left as the guest passed them.

KVM's per-vCPU state of these MSRs (vcpu->arch: microcode_version, pat, mtrr_state,
ia32_misc_enable_msr, mcg_*, mce_banks, the x2APIC page...) is one dict keyed by MSR index,
``vcpu.msr_values``, starting from KVM's values after vCPU creation (`init_msrs`).  The VMM's
KVM_SET_MSRS goes through the same ``tdx_set_msr`` as host-initiated writes (`kvm_set_msrs`).

Simplifications: ARCH_CAPABILITIES starts at 0 (KVM's value depends on the host);
``ignore_msrs`` is off; KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT is on (KVM's default), so the MWAIT
bit of MISC_ENABLE toggles freely; the PMU MSRs are not in a TD's emulated set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import arch, lapic
from .kvm_cpuid import (
    KVM_FEATURE_POLL_CONTROL,
    X86_FEATURE_ARCH_CAPABILITIES,
    X86_FEATURE_TSC_DEADLINE_TIMER,
    X86_FEATURE_X2APIC,
    guest_pv_has,
)
from .tdvmcall_abi import GENERATIONS

if TYPE_CHECKING:
    from .config import MsrFilterRangeConfig
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx

Completion = Callable[["VcpuTdx", "HostCpu"], int]

# --- MSR indices (arch/x86/include/asm/msr-index.h) ---------------------------------------
MSR_IA32_APICBASE = 0x1B
MSR_IA32_FEAT_CTL = 0x3A
MSR_IA32_UCODE_REV = 0x8B
MSR_PLATFORM_INFO = 0xCE
MSR_MTRRcap = 0xFE
MSR_IA32_ARCH_CAPABILITIES = 0x10A
MSR_MISC_FEATURES_ENABLES = 0x140
MSR_IA32_MCG_CAP, MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL = 0x179, 0x17A, 0x17B
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_POWER_CTL = 0x1FC
MTRR_FIRST, MTRR_LAST = 0x200, 0x26F          # MTRRphysBase_MSR(0) .. MSR_MTRRfix4K_F8000
MSR_IA32_CR_PAT = 0x277
MSR_IA32_MC0_CTL2 = 0x280
MSR_MTRRdefType = 0x2FF
MSR_IA32_MC0_CTL = 0x400
MSR_IA32_MCG_EXT_CTL = 0x4D0
MSR_IA32_TSC_DEADLINE = lapic.MSR_IA32_TSC_DEADLINE
X2APIC_FIRST, X2APIC_LAST = lapic.APIC_BASE_MSR, lapic.APIC_BASE_MSR + 0xFF
MSR_EFER = 0xC0000080
MSR_KVM_POLL_CONTROL = 0x4B564DF5
KVM_MAX_MCE_BANKS = 32
MC_CTL_LAST = MSR_IA32_MC0_CTL + 4 * KVM_MAX_MCE_BANKS - 1     # MCx_{CTL,STATUS,ADDR,MISC}
MC_CTL2_LAST = MSR_IA32_MC0_CTL2 + KVM_MAX_MCE_BANKS - 1
MCG_CTL_P, MCG_CMCI_P, MCG_LMCE_P = 1 << 8, 1 << 10, 1 << 27
FEAT_CTL_LOCKED, FEAT_CTL_LMCE_ENABLED = 1 << 0, 1 << 20
MSR_PLATFORM_INFO_CPUID_FAULT = 1 << 31
MISC_ENABLE_PMU_RO_MASK = (1 << 12) | (1 << 11)     # PEBS_UNAVAIL | BTS_UNAVAIL
MISC_ENABLE_EMON = 1 << 7
# kvm_get_msr_common / x86.h return codes
KVM_MSR_RET_UNSUPPORTED = 2
KVM_MSR_RET_FILTERED = 3
# struct kvm_run msr.reason (KVM_CAP_X86_USER_SPACE_MSR)
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
MSR_EXIT_REASON_BITS = {"inval": KVM_MSR_EXIT_REASON_INVAL,
                        "unknown": KVM_MSR_EXIT_REASON_UNKNOWN,
                        "filter": KVM_MSR_EXIT_REASON_FILTER}
KVM_MSR_FILTER_READ, KVM_MSR_FILTER_WRITE = 1 << 0, 1 << 1
# the x2APIC registers today's tdx_has_emulated_msr lists
_X2APIC_LISTED = frozenset(lapic.x2apic_msr(r) for r in (
    lapic.APIC_ID, lapic.APIC_LVR, lapic.APIC_LDR, lapic.APIC_SPIV, lapic.APIC_ESR,
    lapic.APIC_LVTCMCI, lapic.APIC_ICR, lapic.APIC_LVTT, lapic.APIC_LVTTHMR, lapic.APIC_LVTPC,
    lapic.APIC_LVT0, lapic.APIC_LVT1, lapic.APIC_LVTERR, lapic.APIC_TMICT, lapic.APIC_TMCCT,
    lapic.APIC_TDCR))
# the registers v6.16's range excludes: TASKPRI, PROCPRI, EOI and "ISR/TMR/IRR ...
# + APIC_ISR_NR", whose X2APIC_MSR() rounding makes each range a single index (ISR0, TMR0,
# IRR0)
_X2APIC_VIRTUALIZED_V616 = frozenset(lapic.x2apic_msr(r) for r in (
    lapic.APIC_TASKPRI, lapic.APIC_PROCPRI, lapic.APIC_EOI, lapic.APIC_ISR, lapic.APIC_TMR,
    lapic.APIC_IRR))
_MTRR_MSRS = frozenset([*range(0x200, 0x210), 0x250, 0x258, 0x259, *range(0x268, 0x270),
                        MSR_MTRRdefType])
_READ_ONLY = frozenset({MSR_IA32_APICBASE, MSR_EFER, MSR_IA32_FEAT_CTL})
_VALID_MTRR_TYPES = (0, 1, 4, 5, 6)
# of the TD-emulated MSRs, those KVM_GET_MSR_INDEX_LIST advertises whose writes can be
# KVM_MSR_RET_UNSUPPORTED (kvm_is_advertised_msr)
_ADVERTISED = frozenset({MSR_IA32_ARCH_CAPABILITIES, MSR_KVM_POLL_CONTROL})


_EMULATED_NON_X2APIC = frozenset({
    MSR_IA32_UCODE_REV, MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_POWER_CTL, MSR_IA32_CR_PAT,
    MSR_MTRRcap, *range(MTRR_FIRST, MTRR_LAST + 1), MSR_MTRRdefType, MSR_IA32_TSC_DEADLINE,
    MSR_IA32_MISC_ENABLE, MSR_PLATFORM_INFO, MSR_MISC_FEATURES_ENABLES, MSR_IA32_APICBASE,
    MSR_EFER, MSR_IA32_FEAT_CTL, MSR_IA32_MCG_CAP, MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL,
    MSR_IA32_MCG_EXT_CTL, *range(MSR_IA32_MC0_CTL, MC_CTL_LAST + 1),
    *range(MSR_IA32_MC0_CTL2, MC_CTL2_LAST + 1), MSR_KVM_POLL_CONTROL})
_X2APIC_RANGE = frozenset(range(X2APIC_FIRST, X2APIC_LAST + 1))
# per generation: every index tdx_has_emulated_msr accepts
_EMULATED: dict[str, frozenset[int]] = {
    name: _EMULATED_NON_X2APIC | (_X2APIC_LISTED if gen.x2apic_explicit_list
                                  else _X2APIC_RANGE - _X2APIC_VIRTUALIZED_V616)
    for name, gen in GENERATIONS.items()}


def tdx_has_emulated_msr(index: int, abi: str) -> bool:
    """tdx_has_emulated_msr: the MSRs KVM emulates for a TD (the rest are the TDX module's
    or nobody's): UCODE_REV, ARCH_CAPABILITIES, POWER_CTL, CR_PAT, the MTRRs, TSC_DEADLINE,
    MISC_ENABLE, PLATFORM_INFO, MISC_FEATURES_ENABLES, APICBASE, EFER, FEAT_CTL, the MCG and
    MCi bank MSRs, KVM_POLL_CONTROL, and x2APIC registers -- today the 16 KVM can emulate,
    in v6.16 the whole range but TASKPRI, PROCPRI, EOI, ISR0, TMR0 and IRR0."""
    return index in _EMULATED[abi]


@dataclass(frozen=True)
class MsrFilter:
    """struct kvm_x86_msr_filter: default action and ranges (the first match decides)."""

    default_allow: bool
    ranges: tuple[MsrFilterRangeConfig, ...]


def kvm_msr_allowed(vcpu: VcpuTdx, index: int, type_: int) -> bool:
    """kvm_msr_allowed: x2APIC MSRs cannot be filtered; no filter allows everything; else
    the first range containing the index for this access type decides by its bitmap bit,
    and the filter's default if none does."""
    if X2APIC_FIRST <= index <= X2APIC_LAST:
        return True
    flt: MsrFilter | None = vcpu.vm.msr_filter
    if flt is None:
        return True
    for rng in flt.ranges:
        if rng.base <= index < rng.base + rng.nmsrs and rng.flags & type_:
            return bool(rng.bitmap >> (index - rng.base) & 1)
    return flt.default_allow


def kvm_msr_reason(r: int) -> int:
    """kvm_msr_reason: UNSUPPORTED -> UNKNOWN, FILTERED -> FILTER, anything else -> INVAL."""
    if r == KVM_MSR_RET_UNSUPPORTED:
        return KVM_MSR_EXIT_REASON_UNKNOWN
    if r == KVM_MSR_RET_FILTERED:
        return KVM_MSR_EXIT_REASON_FILTER
    return KVM_MSR_EXIT_REASON_INVAL


# --- vCPU state ---------------------------------------------------------------------------
def kvm_vcpu_after_set_cpuid(vm: Any) -> None:
    """kvm_vcpu_after_set_cpuid, for what the model derives from the CPUID table: the APIC
    version and timer-mode mask (kvm_apic_set_version, the TSC-deadline capability) with
    KVM's MCG_CAP (no CMCI: six LVTs)."""
    cpuid = vm.cpuid
    vm.lapic_caps = lapic.LapicCaps(bool(KVM_MAX_MCE_BANKS & MCG_CMCI_P),
                                    cpuid.guest_cpu_cap_has(X86_FEATURE_X2APIC),
                                    cpuid.guest_cpu_cap_has(X86_FEATURE_TSC_DEADLINE_TIMER))


def init_msrs(vcpu: VcpuTdx) -> None:
    """KVM's values after vCPU creation and KVM_TDX_INIT_VCPU (kvm_arch_vcpu_create,
    kvm_vcpu_reset, kvm_arch_vcpu_postcreate, tdx_vcpu_create: EFER, x2APIC-enabled APIC
    base with the BSP bit on vCPU 0), and the x2APIC registers (tdsim.lapic)."""
    m: dict[int, int] = {
        MSR_IA32_APICBASE: 0xFEE00000 | 0xC00 | (0x100 if vcpu.vcpu_id == 0 else 0),
        MSR_EFER: 0xD01,                              # SCE | LME | LMA | NX
        MSR_IA32_UCODE_REV: 0x100000000,
        MSR_IA32_ARCH_CAPABILITIES: 0,
        MSR_IA32_POWER_CTL: 0,
        MSR_IA32_CR_PAT: 0x0007040600070406,          # MSR_IA32_CR_PAT_DEFAULT
        MSR_IA32_MISC_ENABLE: 0x1800,                 # PEBS_UNAVAIL | BTS_UNAVAIL
        MSR_PLATFORM_INFO: MSR_PLATFORM_INFO_CPUID_FAULT,
        MSR_MISC_FEATURES_ENABLES: 0,
        MSR_IA32_MCG_CAP: KVM_MAX_MCE_BANKS,
        MSR_IA32_MCG_STATUS: 0, MSR_IA32_MCG_CTL: 0, MSR_IA32_MCG_EXT_CTL: 0,
        MSR_KVM_POLL_CONTROL: 1,
        MSR_IA32_TSC_DEADLINE: 0,
    }
    m.update(dict.fromkeys(_MTRR_MSRS, 0))
    m.update(dict.fromkeys(range(MSR_IA32_MC0_CTL, MC_CTL_LAST + 1), 0))
    m.update(dict.fromkeys(range(MSR_IA32_MC0_CTL2, MC_CTL2_LAST + 1), 0))
    lapic.kvm_lapic_reset(m, vcpu.vcpu_id, vcpu.vm.lapic_caps)
    vcpu.msr_values = m


# --- tdx_get_msr / tdx_set_msr and the common code ----------------------------------------
def tdx_get_msr(vcpu: VcpuTdx, index: int, host: bool) -> tuple[int, int]:
    """tdx_get_msr: (r, data); r = 0, 1 or KVM_MSR_RET_UNSUPPORTED."""
    if index == MSR_IA32_FEAT_CTL:
        lmce = vcpu.msr_values[MSR_IA32_MCG_CAP] & MCG_LMCE_P
        return 0, FEAT_CTL_LOCKED | (FEAT_CTL_LMCE_ENABLED if lmce else 0)
    if index == MSR_IA32_MCG_EXT_CTL:
        if not host and not vcpu.msr_values[MSR_IA32_MCG_CAP] & MCG_LMCE_P:
            return 1, 0
        return 0, vcpu.msr_values[index]
    if index not in _EMULATED[vcpu.config.tdvmcall_abi]:   # tdx_has_emulated_msr
        return 1, 0
    return kvm_get_msr_common(vcpu, index, host)


def kvm_get_msr_common(vcpu: VcpuTdx, index: int, host: bool) -> tuple[int, int]:
    """kvm_get_msr_common for the MSRs tdx_has_emulated_msr lets through."""
    m = vcpu.msr_values
    if X2APIC_FIRST <= index <= X2APIC_LAST:
        return lapic.kvm_x2apic_msr_read(m, index, vcpu.vm.lapic_caps)
    if index == MSR_IA32_ARCH_CAPABILITIES:
        if not vcpu.vm.cpuid.guest_cpu_cap_has(X86_FEATURE_ARCH_CAPABILITIES):
            return KVM_MSR_RET_UNSUPPORTED, 0
    elif index == MSR_IA32_TSC_DEADLINE:   # kvm_get_lapic_tscdeadline_msr
        if lapic.timer_mode(m, vcpu.vm.lapic_caps) != lapic.APIC_LVT_TIMER_TSCDEADLINE:
            return 0, 0
    elif index == MSR_KVM_POLL_CONTROL:
        if not guest_pv_has(vcpu.vm, KVM_FEATURE_POLL_CONTROL):
            return KVM_MSR_RET_UNSUPPORTED, 0
    elif index == MSR_MTRRcap:
        return 0, 0x500 | 8                 # kvm_mtrr_get_msr: WC, fixed, 8 variable
    elif MTRR_FIRST <= index <= MTRR_LAST and index not in _MTRR_MSRS:
        return 1, 0                         # find_mtrr: not an MTRR
    elif index == MSR_IA32_MCG_CTL:
        if not m[MSR_IA32_MCG_CAP] & MCG_CTL_P and not host:
            return 1, 0
    elif (MSR_IA32_MC0_CTL2 <= index <= MC_CTL2_LAST and not m[MSR_IA32_MCG_CAP] & MCG_CMCI_P
          and not host):
        return 1, 0
    return 0, m[index]


def tdx_set_msr(vcpu: VcpuTdx, index: int, data: int,
                host: bool) -> tuple[int, tuple[int, int] | None]:
    """tdx_set_msr: (r, an IPI the x2APIC write sends or None)."""
    if index == MSR_IA32_MCG_EXT_CTL:
        m = vcpu.msr_values
        if (not host and not m[MSR_IA32_MCG_CAP] & MCG_LMCE_P) or data & ~1:
            return 1, None
        m[index] = data
        return 0, None
    if index in _READ_ONLY or index not in _EMULATED[vcpu.config.tdvmcall_abi]:
        return 1, None
    return kvm_set_msr_common(vcpu, index, data, host)


def kvm_pat_valid(data: int) -> bool:
    """kvm_pat_valid: every byte is one of the memory types 0, 1, 4, 5, 6, 7."""
    if data & 0xF8F8F8F8F8F8F8F8:
        return False
    return (data | ((data & 0x0202020202020202) << 1)) == data


def kvm_mtrr_valid(index: int, data: int, maxphyaddr: int) -> bool:
    """kvm_mtrr_valid: memory types 0, 1, 4, 5, 6; reserved bits clear (a variable MTRR's
    physical-address bits stop at the guest MAXPHYADDR)."""
    if index == MSR_MTRRdefType:
        return not data & ~0xCFF and data & 0xFF in _VALID_MTRR_TYPES
    if index >= 0x250:
        return all((data >> (8 * i)) & 0xFF in _VALID_MTRR_TYPES for i in range(8))
    mask = ((1 << 64) - 1) ^ ((1 << maxphyaddr) - 1)
    if index & 1 == 0:
        if data & 0xFF not in _VALID_MTRR_TYPES:
            return False
        mask |= 0xF00
    else:
        mask |= 0x7FF
    return not data & mask


def kvm_set_msr_common(vcpu: VcpuTdx, index: int, data: int,
                       host: bool) -> tuple[int, tuple[int, int] | None]:
    """kvm_set_msr_common for the MSRs tdx_has_emulated_msr lets through (read-only ones
    never get here)."""
    m = vcpu.msr_values
    if X2APIC_FIRST <= index <= X2APIC_LAST:
        return lapic.kvm_x2apic_msr_write(m, index, data, vcpu.vm.lapic_caps)
    mcg_cap = m[MSR_IA32_MCG_CAP]
    if index == MSR_IA32_TSC_DEADLINE:      # kvm_set_lapic_tscdeadline_msr
        if lapic.timer_mode(m, vcpu.vm.lapic_caps) == lapic.APIC_LVT_TIMER_TSCDEADLINE:
            m[index] = data                 # (the hrtimer it would start is not modelled)
    elif index == MSR_IA32_UCODE_REV:
        if host:                            # a guest write is accepted and ignored
            m[index] = data
    elif index == MSR_IA32_ARCH_CAPABILITIES:
        if not host or not vcpu.vm.cpuid.guest_cpu_cap_has(X86_FEATURE_ARCH_CAPABILITIES):
            return KVM_MSR_RET_UNSUPPORTED, None
        m[index] = data
    elif index == MSR_IA32_CR_PAT:
        if not kvm_pat_valid(data):
            return 1, None
        m[index] = data
    elif MTRR_FIRST <= index <= MTRR_LAST or index == MSR_MTRRdefType:
        if index not in _MTRR_MSRS or not kvm_mtrr_valid(index, data, vcpu.vm.cpuid.maxphyaddr):
            return 1, None
        m[index] = data
    elif index == MSR_IA32_MISC_ENABLE:
        old = m[index]
        if not host:
            if (old ^ data) & MISC_ENABLE_PMU_RO_MASK:
                return 1, None
            data = (data & ~MISC_ENABLE_EMON) | (old & MISC_ENABLE_EMON)
        m[index] = data
    elif index == MSR_IA32_POWER_CTL:
        m[index] = data
    elif index == MSR_KVM_POLL_CONTROL:
        if not guest_pv_has(vcpu.vm, KVM_FEATURE_POLL_CONTROL):
            return KVM_MSR_RET_UNSUPPORTED, None
        if data & ~1:
            return 1, None
        m[index] = data
    elif index == MSR_PLATFORM_INFO:
        if not host:
            return 1, None
        m[index] = data
    elif index == MSR_MISC_FEATURES_ENABLES:
        if data & ~1 or (data & 1 and not m[MSR_PLATFORM_INFO] & MSR_PLATFORM_INFO_CPUID_FAULT):
            return 1, None
        m[index] = data
    elif index == MSR_IA32_MCG_STATUS:
        m[index] = data
    elif index == MSR_IA32_MCG_CTL:
        if not mcg_cap & MCG_CTL_P and (data or not host):
            return 1, None
        if data not in (0, (1 << 64) - 1):
            return 1, None
        m[index] = data
    elif MSR_IA32_MC0_CTL2 <= index <= MC_CTL2_LAST:
        if not mcg_cap & MCG_CMCI_P and (data or not host):
            return 1, None
        if data & ~((1 << 30) | 0x7FFF):    # CMCI_EN | CMCI_THRESHOLD_MASK
            return 1, None
        m[index] = data
    elif MSR_IA32_MC0_CTL <= index <= MC_CTL_LAST:
        if index & 3 == 0 and data and (data | (1 << 10) | 1) != (1 << 64) - 1:
            return 1, None                  # MCi_CTL: 0 or all ones (bits 10, 0 may clear)
        if index & 3 == 1 and data and not host:
            return 1, None                  # MCi_STATUS: only 0 from an Intel guest
        m[index] = data
    else:                                   # MTRRcap, MCG_CAP: no case for a write
        return KVM_MSR_RET_UNSUPPORTED, None
    return 0, None


def kvm_set_msrs(vcpu: VcpuTdx, entries: Sequence[tuple[int, int]]) -> int:
    """KVM_SET_MSRS: host-initiated writes in order, stopping at the first failure (a
    KVM_MSR_RET_UNSUPPORTED write of 0 to an MSR KVM advertises counts as done, as in
    kvm_do_msr_access).  Returns how many were set.

    Simplification: a host write of the x2APIC ICR stores the value; the IPI KVM would send
    from the ioctl is not modelled."""
    done = 0
    for index, data in entries:
        if X2APIC_FIRST <= index <= X2APIC_LAST and (index - X2APIC_FIRST) << 4 == \
                lapic.APIC_ICR and tdx_has_emulated_msr(index, vcpu.config.tdvmcall_abi):
            vcpu.msr_values[index] = data
            r = 0
        else:
            r, _ipi = tdx_set_msr(vcpu, index, data, True)
        if r == KVM_MSR_RET_UNSUPPORTED and data == 0 and index in _ADVERTISED:
            r = 0
        if r:
            break
        done += 1
    return done


# --- the RDMSR / WRMSR TDVMCALLs ------------------------------------------------------------
def kvm_msr_user_space(vcpu: VcpuTdx, index: int, exit_reason: int, data: int,
                       completion: Completion, r: int) -> bool:
    """kvm_msr_user_space: exit to the VMM if it enabled this failure's reason
    (KVM_CAP_X86_USER_SPACE_MSR); msr.error = 0, msr.data = 0 for a read."""
    reason = kvm_msr_reason(r)
    if not vcpu.vm.user_space_msr_mask & reason:
        return False
    run = vcpu.run
    run.exit_reason = exit_reason
    msr = run.msr
    msr["error"] = 0
    msr["reason"] = reason
    msr["index"] = index
    msr["data"] = data
    vcpu.pending_completion = completion
    return True


def kvm_emulate_rdmsr(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """EXIT_REASON_MSR_READ: RCX <- R12; kvm_emulate_rdmsr -> kvm_emulate_msr_read (the
    filter, then tdx_get_msr) -> EDX:EAX, or a userspace exit, then
    tdx_complete_emulated_msr."""
    g.rcx = g.r12
    vcpu.regs_moves += 1
    index = g.rcx & 0xFFFFFFFF
    if vcpu.vm.msr_filter is not None and not kvm_msr_allowed(vcpu, index,
                                                             KVM_MSR_FILTER_READ):
        r = KVM_MSR_RET_FILTERED
    else:
        r, data = tdx_get_msr(vcpu, index, False)
        if not r:
            g.rax, g.rdx = data & 0xFFFFFFFF, data >> 32
    if r and kvm_msr_user_space(vcpu, index, arch.KVM_EXIT_X86_RDMSR, 0,
                                complete_fast_rdmsr, r):
        return 0
    return tdx_complete_emulated_msr(vcpu, cpu, r, True)


def kvm_emulate_wrmsr(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """EXIT_REASON_MSR_WRITE: RCX <- R12, EDX:EAX <- R13; kvm_emulate_wrmsr ->
    kvm_emulate_msr_write (the filter, then tdx_set_msr).  An x2APIC ICR write sends its
    IPI; a statistical guest's goes to the destinations its pattern names."""
    g.rcx, g.rax, g.rdx = g.r12, g.r13 & 0xFFFFFFFF, g.r13 >> 32
    vcpu.regs_moves += 3
    index = g.rcx & 0xFFFFFFFF
    data = (g.rdx << 32) | g.rax
    if vcpu.vm.msr_filter is not None and not kvm_msr_allowed(vcpu, index,
                                                             KVM_MSR_FILTER_WRITE):
        r = KVM_MSR_RET_FILTERED
    else:
        r, ipi = tdx_set_msr(vcpu, index, data, False)
        if ipi is not None:
            if vcpu.call_log is not None:  # a scripted guest: the ICR says where
                vcpu.stat["ipi.sent"] += 1
                lapic.kvm_apic_send_ipi(vcpu, cpu, ipi[0], ipi[1], vcpu.irq,
                                        vcpu.costs.icr_write_ns)
            else:
                tdx_vm = vcpu.tdx_vm
                lapic.kvm_apic_send_ipi_pattern(vcpu, cpu, data, tdx_vm.tdx_interrupts,
                                                tdx_vm.ipi_rng, vcpu.irq,
                                                vcpu.costs.icr_write_ns)
        if index == MSR_IA32_TSC_DEADLINE and vcpu.guest.kind == "tsc_deadline":
            # a statistical one-shot guest re-arms its timer (its own timer model)
            vcpu.lapic_timer.kvm_set_lapic_tscdeadline_msr()
    if r and kvm_msr_user_space(vcpu, index, arch.KVM_EXIT_X86_WRMSR, data,
                                complete_fast_msr_access, r):
        return 0
    return tdx_complete_emulated_msr(vcpu, cpu, r, False)


def complete_fast_rdmsr(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """complete_fast_rdmsr: EDX:EAX = msr.data unless the VMM set msr.error (a u8)."""
    msr = vcpu.run.msr
    error = msr["error"] & 0xFF
    if not error:
        g = vcpu.gprs
        g.rax, g.rdx = msr["data"] & 0xFFFFFFFF, (msr["data"] >> 32) & 0xFFFFFFFF
    return tdx_complete_emulated_msr(vcpu, cpu, error, True)


def complete_fast_msr_access(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """complete_fast_msr_access: the VMM's msr.error decides."""
    return tdx_complete_emulated_msr(vcpu, cpu, vcpu.run.msr["error"] & 0xFF, False)


def tdx_complete_emulated_msr(vcpu: VcpuTdx, cpu: HostCpu, err: int, read: bool) -> int:
    """tdx_complete_emulated_msr: an error -> R10 = INVALID_OPERAND (R11 untouched); a read
    -> R11 = EDX:EAX (R10 untouched); a write -> nothing."""
    g = vcpu.gprs
    if err:
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    if read:
        g.r11 = (g.rdx << 32) | g.rax
        vcpu.regs_moves += 1
    return 1
