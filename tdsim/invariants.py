"""The host-state invariants, checked during every run (declared in `tdsim.findings`).

* ``host_state_leak`` -- host user code runs (a task returns to user mode) while a
  user-return MSR, KERNEL_GS_BASE, IA32_DEBUGCTL, IA32_XSS, XCR0 or PKRU holds a non-host
  value (the context-switch side of it is `tdsim.host.Scheduler.save_fsgs`).
* ``uret_cache_mismatch`` -- when no TD guest state is loaded on a CPU (after vcpu_put and at
  user return), KVM's user-return ``curr`` differs from the hardware MSR.  While a TD vCPU is
  loaded the v6.16 design lets them differ on purpose, so they are not compared then.
* ``kernel_gs_base_not_restored`` -- after vcpu_put the CPU's KERNEL_GS_BASE is not the
  vCPU thread's own GS base.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch

if TYPE_CHECKING:
    from .findings import Findings
    from .host import HostCpu, Thread


def _check_uret_cache(findings: Findings, cpu: HostCpu, who: str | None, where: str) -> None:
    hw = cpu.msr
    for slot, believed in cpu.uret.curr.items():
        if hw[slot] != believed:
            findings.record("uret_cache_mismatch", cpu.index, who,
                            f"{where}: KVM believes {arch.MSR_NAMES[slot]}={believed:#x} "
                            f"but the CPU holds {hw[slot]:#x}", msr=slot)


def check_user_mode(findings: Findings, cpu: HostCpu, task: Thread,
                    no_vcpu_loaded: bool) -> None:
    """`task` is about to run user code on `cpu` (after the user-return notifier)."""
    hw = cpu.msr
    for slot, host in cpu.uret.host.items():
        if hw[slot] != host:
            findings.record("host_state_leak", cpu.index, task.name,
                            f"{task.name} returns to user mode with {arch.MSR_NAMES[slot]}="
                            f"{hw[slot]:#x} (host value {host:#x})", msr=slot)
    kgs = hw[arch.MSR_KERNEL_GS_BASE]
    if kgs != task.gsbase:
        findings.record("host_state_leak", cpu.index, task.name,
                        f"{task.name} returns to user mode with KERNEL_GS_BASE={kgs:#x} "
                        f"(its GS base is {task.gsbase:#x})", msr=arch.MSR_KERNEL_GS_BASE)
    xs = cpu.host_xstate
    if (hw[arch.MSR_IA32_DEBUGCTLMSR] != xs.debugctl or hw[arch.MSR_IA32_XSS] != xs.xss
            or cpu.xcr0 != xs.xcr0 or cpu.pkru != xs.pkru):
        for what, msr, value, host in (
                ("IA32_DEBUGCTL", arch.MSR_IA32_DEBUGCTLMSR, hw[arch.MSR_IA32_DEBUGCTLMSR],
                 xs.debugctl),
                ("IA32_XSS", arch.MSR_IA32_XSS, hw[arch.MSR_IA32_XSS], xs.xss),
                ("XCR0", None, cpu.xcr0, xs.xcr0), ("PKRU", None, cpu.pkru, xs.pkru)):
            if value != host:
                findings.record("host_state_leak", cpu.index, task.name,
                                f"{task.name} returns to user mode with {what}={value:#x} "
                                f"(host value {host:#x})", msr=msr)
    if no_vcpu_loaded:
        _check_uret_cache(findings, cpu, task.name, "user return")


def check_after_put(findings: Findings, cpu: HostCpu, vcpu: Thread) -> None:
    """After vcpu_put: no guest state is loaded on `cpu` any more."""
    kgs = cpu.msr[arch.MSR_KERNEL_GS_BASE]
    if kgs != vcpu.gsbase:
        findings.record("kernel_gs_base_not_restored", cpu.index, vcpu.name,
                        f"after vcpu_put KERNEL_GS_BASE={kgs:#x}, host value "
                        f"{vcpu.gsbase:#x}", msr=arch.MSR_KERNEL_GS_BASE)
    _check_uret_cache(findings, cpu, vcpu.name, "after vcpu_put")
