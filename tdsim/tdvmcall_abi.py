"""The generations of KVM's TDVMCALL handling that ``[kvm] tdvmcall_abi`` selects.

TDX KVM was merged in the 6.16 merge window; its TDVMCALL handling changed three times since
in ways a guest can see.  Each generation is declared once here, with the kernel text it
follows; the handlers (`tdsim.tdvmcall`, `tdsim.tdvmcall_msr`) ask the generation of their
vCPU, the scenario schema takes its choices from `GENERATIONS`, and docs/tdvmcall.md lists
them.

* ``"v6.16-rc1"``: TDX KVM as first merged (arch/x86/kvm/vmx/tdx.c in 6.16-rc1 to -rc5; the
  text read is torvalds/linux 3829d81b, a 6.16-rc tree): no SetupEventNotifyInterrupt.
* ``"v6.16"``: the v6.16 release.  Merge 5383fc05 ("kvm-x86-fixes-6.16-rcN", 2025-07-08, in
  6.16-rc6) added ``tdx_setup_event_notify_interrupt`` and advertised the userspace
  TDVMCALLs; the MapGPA completion still turns any nonzero ``hypercall.ret`` into
  INVALID_OPERAND and ``tdx_has_emulated_msr`` still accepts the x2APIC range minus a few
  registers.  (Scenario files written before the rc1 value existed said ``"v6.16"`` for the
  first merged code; they now get SetupEventNotifyInterrupt forwarded, which no shipped
  scenario or statistical workload issues.)
* ``"current"``: the kvm-x86 tree (09c6f74e): ``tdx_complete_vmcall_map_gpa`` takes the
  positive errnos EAGAIN / EINVAL from userspace and fails KVM_RUN with -EINVAL for any other
  nonzero value (Sagi Shahar, "KVM: TDX: Allow userspace to return errors to guest for
  MAPGPA", 2026); ``tdx_has_emulated_msr`` lists the 16 x2APIC registers KVM can emulate
  (Rick Edgecombe, "KVM: TDX: Fix x2APIC MSR handling in tdx_has_emulated_msr()", 2026).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Generation:
    """What one generation of tdx.c does differently."""

    name: str
    source: str                  # the kernel text it follows
    setup_event_notify: bool     # handle_tdvmcall dispatches SetupEventNotifyInterrupt
    map_gpa_errno_abi: bool      # MapGPA completion: EAGAIN/EINVAL, else KVM_RUN -EINVAL
    x2apic_explicit_list: bool   # tdx_has_emulated_msr: 16 x2APIC registers, else a range


GENERATIONS: dict[str, Generation] = {g.name: g for g in (
    Generation("current", "kvm-x86/linux 09c6f74e arch/x86/kvm/vmx/tdx.c", True, True, True),
    Generation("v6.16", "v6.16 release (kvm-x86/linux 821655be, merge 5383fc05)", True, False,
               False),
    Generation("v6.16-rc1", "as first merged (torvalds/linux 3829d81b, 6.16-rc1..rc5)", False,
               False, False),
)}
