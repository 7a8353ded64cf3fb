"""Every metric tdsim reports, declared once: its name pattern, unit, human label and meaning.

A run's result holds flat dotted metrics (``exits.reason.CPUID``, ``wrmsr.msr.MSR_STAR``,
``vm.td0.vcpu.3.late_abort.kick``).  Each belongs to one family declared in `METRICS`; the
family gives the unit and a label for tables, plots and reports, and says what the metric
counts.  A metric the model emits that no family declares is a tdsim bug: `undeclared` lists
them, and the test suite runs it over every run it makes, so a misspelt counter fails a test
instead of silently becoming a new metric.

Pattern syntax: dotted text with ``{placeholder}`` segments.  A placeholder matches one dotted
segment; `PLACEHOLDERS` restricts some to a fixed set of values (``{reason}`` is a VMX exit
reason name, ``{msr}`` an MSR name) and leaves the others free.

Per-vCPU metrics: the counters a vCPU keeps are reported twice, summed over the run and under
``vm.<vm>.vcpu.<i>.`` for that vCPU.  Families whose ``per_vcpu`` is true may appear with that
prefix.  Host-wide counters (SEPT zaps, host NMIs) and derived values are reported once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from . import arch


@dataclass(frozen=True)
class MetricFamily:
    """One declared family of metrics."""

    pattern: str
    unit: str  # "exits", "ns", "WRMSRs", "events", ... (what one unit of the value is)
    label: str  # human label for tables and plots, without the unit
    doc: str
    per_vcpu: bool = True  # also reported per vCPU (vm.<vm>.vcpu.<i>.<metric>)


_EXIT_REASONS = tuple(arch.EXIT_REASON_NAMES.values())
_KVM_EXITS = tuple(arch.KVM_EXIT_NAMES.values()) + ("KVM_EXIT_UNKNOWN",)
_MSRS = tuple(arch.MSR_NAMES.values())
_LEAVES = tuple(arch.SEAMCALL_NAMES.values())
_SITES = ("prepare", "put", "user_return", "post_exit", "vcpu_run")
_PUT_CAUSES = ("preempt", "kvm_run_return", "halt")
_IRQ_SOURCES = ("timer", "ipi", "device", "nmi")
_IRQ_EXIT_SOURCES = ("tick", "timer", "kick", "resched", "flush_ipi", "other", "pi_wakeup")
_IPI_PATTERNS = ("unicast", "multicast", "broadcast", "shootdown")
_CATEGORIES = ("guest", "kvm", "vmm", "host_task", "idle")
_STATS = ("p50", "p90", "p99", "max", "count")
_SEPT_CALLS = ("block", "track", "remove")
_KICK_CAUSES = ("busy", "track")

# Placeholders with a closed set of values; any other placeholder matches one segment.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "reason": _EXIT_REASONS,
    "kvm_exit": _KVM_EXITS,
    "msr": _MSRS,
    "leaf": _LEAVES,
    "site": _SITES,
    "put_cause": _PUT_CAUSES,
    "source": _IRQ_SOURCES,
    "irq_source": _IRQ_EXIT_SOURCES,
    "pattern": _IPI_PATTERNS,
    "category": _CATEGORIES,
    "stat": _STATS,
    "sept_call": _SEPT_CALLS,
    "kick_cause": _KICK_CAUSES,
}

METRICS: tuple[MetricFamily, ...] = (
    # --- the run loop ---------------------------------------------------------------------
    MetricFamily("exits", "exits", "TD / VM exits",
                 "exits handled by KVM (tdx_handle_exit / vmx_handle_exit), including "
                 "TDH.VP.ENTER returns that did not enter the guest"),
    MetricFamily("exits.reason.{reason}", "exits", "exits by reason",
                 "exits by the basic exit reason KVM derived (INVALID for an error status)"),
    MetricFamily("userspace_exits", "exits", "exits to userspace",
                 "returns from KVM_RUN to the VMM"),
    MetricFamily("userspace_exits.reason.{kvm_exit}", "exits", "exits to userspace by reason",
                 "returns from KVM_RUN by kvm_run->exit_reason"),
    MetricFamily("late_abort", "aborts", "late entry aborts",
                 "entries abandoned after KVM did entry work (docs/late-aborts.md)"),
    MetricFamily("late_abort.{path}", "aborts", "late entry aborts by path",
                 "entry aborts by cause: kick, request, signal, need_resched, notify_resume "
                 "(the late exit-request check), request_exit, vm_dead, mmu_reload_fail, "
                 "wait_for_sept_zap, operand_busy, tsc_rollback, inconsistent_msr, "
                 "vcpu_associated, sw_error, zero_step, failed_vmentry"),
    MetricFamily("vcpu_load", "calls", "vcpu_load", "vcpu_load calls (KVM_RUN entry and "
                 "sched-in)"),
    MetricFamily("vcpu_put", "calls", "vcpu_put", "vcpu_put calls"),
    MetricFamily("vcpu_put.cause.{put_cause}", "calls", "vcpu_put by cause",
                 "vcpu_put by what caused it: preemption, KVM_RUN returning, halt"),
    MetricFamily("host_state_reload", "reloads", "host-state reloads",
                 "vcpu_put calls that restored host state (stat.host_state_reload)"),
    MetricFamily("preempted", "events", "preemptions in KVM_RUN",
                 "schedule() from vcpu_run because need_resched was set"),
    MetricFamily("migrations", "migrations", "vCPU migrations",
                 "vcpu_load on a CPU other than the previous one"),
    MetricFamily("kicks", "kicks", "kicks", "kvm_vcpu_kick calls that changed "
                 "IN_GUEST_MODE to EXITING_GUEST_MODE"),
    MetricFamily("notify_resume", "events", "notify-resume work",
                 "resume_user_mode_work run from xfer_to_guest_mode_handle_work"),
    MetricFamily("cpu_offline", "CPUs", "CPU hot-unplugs", "CPUs taken offline "
                 "([[host.hotplug]]; counted when KVM's teardown has run)", per_vcpu=False),
    MetricFamily("cpu_online", "CPUs", "CPU replugs", "CPUs brought back online",
                 per_vcpu=False),
    MetricFamily("gs_base_changes", "changes", "vCPU thread GS base changes",
                 "GS base changes by user code: VMM on vCPU threads, host tasks "
                 "([host] gs_base_change_hz)"),
    MetricFamily("vcpu_stopped", "vCPUs", "vCPUs stopped by the VMM",
                 "vCPU threads the VMM stopped after a fatal exit"),
    MetricFamily("vp_enter_busy", "SEAMCALLs", "TDH.VP.ENTER busy retries",
                 "TDH.VP.ENTER returns of TDX_OPERAND_BUSY handled as EXIT_FASTPATH_EXIT_HANDLED"),
    MetricFamily("irq_exits", "exits", "external-interrupt exits",
                 "EXTERNAL_INTERRUPT exits (stat.irq_exits)"),
    MetricFamily("irq_exits.{irq_source}", "exits", "external-interrupt exits by source",
                 "EXTERNAL_INTERRUPT exits by the host interrupt that caused them"),
    MetricFamily("ept_violation", "exits", "zero-step EPT violations",
                 "EPT-violation exits the TDX module synthesized (zero-step mitigation)"),
    # --- host state -----------------------------------------------------------------------
    MetricFamily("wrmsr.total", "WRMSRs", "WRMSRs", "WRMSR instructions, all MSRs and sites"),
    MetricFamily("wrmsr.ns", "ns", "time in WRMSR", "wrmsr.total x costs.wrmsr_ns",
                 per_vcpu=False),
    MetricFamily("wrmsr.msr.{msr}", "WRMSRs", "WRMSRs by MSR", "WRMSRs of one MSR"),
    MetricFamily("wrmsr.site.{site}", "WRMSRs", "WRMSRs by site",
                 "WRMSRs by where KVM issued them: prepare (tdx_prepare_switch_to_guest), "
                 "put (vcpu_put), user_return (the user-return notifier), post_exit (a "
                 "strategy's writes after every TDH.VP.ENTER), vcpu_run (tdx_vcpu_run's "
                 "DEBUGCTL and IA32_XSS restores after every TDH.VP.ENTER)"),
    MetricFamily("rdmsr.msr.{msr}", "RDMSRs", "RDMSRs by MSR", "RDMSRs of one MSR"),
    MetricFamily("xsetbv", "XSETBVs", "XSETBVs", "XCR0 writes (tdx_load_host_xsave_state)"),
    MetricFamily("wrpkru", "WRPKRUs", "WRPKRUs", "PKRU writes (tdx_load_host_xsave_state)"),
    MetricFamily("regs.copies", "copies", "GPR copies",
                 "8-byte register moves between vp_enter_args and regs[] and inside the "
                 "emulation paths"),
    MetricFamily("regs.bytes", "bytes", "GPR bytes copied", "8 x regs.copies"),
    # --- SEAMCALLs ------------------------------------------------------------------------
    MetricFamily("seamcall.{leaf}", "SEAMCALLs", "SEAMCALLs by leaf", "SEAMCALLs of one leaf"),
    MetricFamily("seamcall.{leaf}.status.{status}", "SEAMCALLs", "SEAMCALLs by leaf and status",
                 "SEAMCALLs of one leaf by the status class they returned"),
    MetricFamily("seamcall.TDH_VP_ENTER.operand_busy.{operand}", "SEAMCALLs",
                 "TDH.VP.ENTER OPERAND_BUSY by operand",
                 "TDH.VP.ENTER returns of TDX_OPERAND_BUSY by the busy operand id"),
    # --- TDVMCALLs ------------------------------------------------------------------------
    MetricFamily("tdvmcall.{kind}", "calls", "TDVMCALLs by kind",
                 "TDVMCALLs KVM handled, by the guest's kind of call"),
    MetricFamily("hypercalls", "calls", "KVM hypercalls", "KVM hypercalls (R10 != 0)"),
    MetricFamily("io_exits", "calls", "IO TDVMCALLs", "Instruction.IO TDVMCALLs"),
    # --- interrupts, NMIs, timers, halts --------------------------------------------------
    MetricFamily("pi_posted", "interrupts", "posted interrupts", "vectors newly set in the PIR"),
    MetricFamily("pi_coalesced", "interrupts", "coalesced posted interrupts",
                 "posts of a vector already pending in the PIR"),
    MetricFamily("pi_delivered", "events", "PIR deliveries",
                 "times the CPU moved the PIR into the virtual APIC"),
    MetricFamily("irq.posted.{source}", "interrupts", "interrupts posted by source",
                 "vectors newly pending, by source"),
    MetricFamily("irq.taken.{source}", "interrupts", "interrupts taken by source",
                 "pending vectors the guest took, by source"),
    MetricFamily("irq.latency_ns_sum.{source}", "ns", "summed delivery latency",
                 "sum of post-to-take latencies, by source"),
    MetricFamily("irq.latency_ns.{source}.{stat}", "ns", "interrupt delivery latency",
                 "post-to-take latency percentiles (nearest rank), max and count, by source; "
                 "per vCPU only p50, p99 and max"),
    MetricFamily("device_irq", "interrupts", "device interrupts", "device MSIs posted"),
    MetricFamily("pi.sn_suppressed", "interrupts", "device interrupts with SN set",
                 "IOMMU postings that found SN set (vCPU put, not waiting for a wake-up): "
                 "PIR bit only, no ON, no notification"),
    MetricFamily("pi.wakeup_handler", "events", "wake-up handler visits",
                 "pi_wakeup_handler runs that found the vCPU on the CPU's wake-up list"),
    MetricFamily("pi.wakeups", "wake-ups", "wake-up handler wake-ups",
                 "blocked vCPUs pi_wakeup_handler woke (ON set)"),
    MetricFamily("ipi.sent", "IPIs", "guest IPIs sent", "x2APIC ICR writes"),
    MetricFamily("ipi.sent.{pattern}", "IPIs", "guest IPIs sent by pattern",
                 "guest IPIs by destination pattern"),
    MetricFamily("ipi.received", "IPIs", "guest IPIs received", "IPI vectors posted to a "
                 "destination vCPU"),
    MetricFamily("ipi.shootdowns", "shootdowns", "TLB shootdowns completed",
                 "shootdowns whose every receiver acked"),
    MetricFamily("ipi.shootdown_spin_ns", "ns", "shootdown spin", "sender spin time from the ICR "
                 "write to the last ack"),
    MetricFamily("ipi.shootdown_ns.{stat}", "ns", "shootdown latency",
                 "ICR write to last ack, percentiles"),
    MetricFamily("nmi.injected", "NMIs", "NMIs injected", "kvm_inject_nmi calls"),
    MetricFamily("nmi.delivered", "NMIs", "NMIs delivered", "PEND_NMI injected at TD entry"),
    MetricFamily("nmi.coalesced", "NMIs", "NMIs coalesced", "NMIs collapsed into a pending one"),
    MetricFamily("nmi_injections", "NMIs", "TDH.VP.WR(PEND_NMI)",
                 "tdx_inject_nmi calls (stat.nmi_injections)"),
    MetricFamily("host_nmi", "NMIs", "host NMIs", "host NMIs on any CPU", per_vcpu=False),
    MetricFamily("timer_fired", "events", "guest timer expiries", "guest LAPIC timer hrtimer "
                 "expiries"),
    MetricFamily("timer_armed", "events", "one-shot timer re-arms",
                 "WRMSR(IA32_TSC_DEADLINE) re-arms of a one-shot guest timer"),
    MetricFamily("lapic.expire_waits", "waits", "kvm_wait_lapic_expire spins",
                 "entries that spun until an early-fired timer's deadline"),
    MetricFamily("lapic.expire_wait_ns", "ns", "kvm_wait_lapic_expire time", "time spun"),
    MetricFamily("tlb_flush_requests", "requests", "remote TLB flush requests",
                 "KVM_REQ_TLB_FLUSH set by a host-side flush"),
    MetricFamily("halt_block", "halts", "halts that blocked", "kvm_vcpu_block sleeps"),
    MetricFamily("halt_wakeup", "wake-ups", "halt wake-ups", "kvm_vcpu_wake_up of a halted vCPU"),
    MetricFamily("halt_ns", "ns", "time halted", "time blocked in kvm_vcpu_block"),
    MetricFamily("halt_poll_success", "polls", "successful halt polls",
                 "halt-polling that found an event"),
    MetricFamily("halt_poll_fail", "polls", "failed halt polls",
                 "halt-polling that timed out"),
    MetricFamily("halt.poll_ns", "ns", "time halt-polling", "time spent halt-polling"),
    MetricFamily("halt.spurious_wakeup", "wake-ups", "spurious halt wake-ups",
                 "wake-ups after which the vCPU had no event and slept again"),
    MetricFamily("halt.wakeup_latency_ns_sum", "ns", "summed wake-up latency",
                 "sum of kvm_vcpu_wake_up to running-again times"),
    MetricFamily("halt.wakeup_latency_ns.{stat}", "ns", "halt wake-up latency",
                 "kvm_vcpu_wake_up to running again, percentiles"),
    # --- SEPT, private faults -------------------------------------------------------------
    MetricFamily("sept.zaps", "zaps", "SEPT zaps", "private-page zaps", per_vcpu=False),
    MetricFamily("sept.zap_ns", "ns", "SEPT zap time",
                 "time from a zap's first BLOCK to its last WBINVD", per_vcpu=False),
    MetricFamily("sept.kicks", "kicks", "SEPT kick-and-wait kicks",
                 "vCPUs waited for by KVM_REQ_OUTSIDE_GUEST_MODE", per_vcpu=False),
    MetricFamily("sept.kicks.{kick_cause}", "kicks", "SEPT kick-and-wait kicks by cause",
                 "vCPUs waited for, by why KVM made the request: busy (tdh_do_no_vcpus after "
                 "OPERAND_BUSY, with wait_for_sept_zap set) or track (tdx_track's "
                 "unconditional kick after every TDH.MEM.TRACK)", per_vcpu=False),
    MetricFamily("sept.kick_wait_ns", "ns", "SEPT kick-and-wait time",
                 "time waiting for every vCPU to leave the TD", per_vcpu=False),
    MetricFamily("sept.kick_wait_ns.{kick_cause}", "ns", "SEPT kick-and-wait time by cause",
                 "time waiting for every vCPU to leave the TD, by the request's cause",
                 per_vcpu=False),
    MetricFamily("sept.busy.{sept_call}", "SEAMCALLs", "busy SEPT-zap SEAMCALLs",
                 "first tries of TDH.MEM.RANGE.BLOCK / TDH.MEM.TRACK / TDH.MEM.PAGE.REMOVE "
                 "that returned TDX_OPERAND_BUSY (each opens one wait_for_sept_zap window)",
                 per_vcpu=False),
    MetricFamily("sept.no_vcpus_ns", "ns", "tdh_do_no_vcpus time",
                 "time with wait_for_sept_zap set", per_vcpu=False),
    MetricFamily("sept.no_vcpus_ns.{sept_call}", "ns", "tdh_do_no_vcpus time by SEAMCALL",
                 "time with wait_for_sept_zap set, by the SEAMCALL being retried (kick-and-wait "
                 "plus the retry)", per_vcpu=False),
    MetricFamily("sept.wait_ns", "ns", "time spinning on wait_for_sept_zap",
                 "vCPU time in vcpu_enter_guest while wait_for_sept_zap was set"),
    MetricFamily("ept.private_faults", "faults", "private-page EPT violations",
                 "EPT violations on unmapped private pages"),
    MetricFamily("ept.local_retries", "retries", "local fault retries",
                 "RET_PF_RETRY loops inside tdx_handle_ept_violation"),
    MetricFamily("ept.retry_bailouts", "events", "fault-retry bail-outs",
                 "local retry loops left for a pending signal or event"),
    # --- faults, KVM_BUG_ON, VMX co-tenants -----------------------------------------------
    MetricFamily("faults.{knob}", "events", "injected faults", "fault injections by knob "
                 "(docs/late-aborts.md); faults.sept_zap is host-wide; faults.scripted counts "
                 "the TDH.VP.ENTER outcomes scripted guests forced (vp_enter steps)"),
    MetricFamily("faults.signal.dropped", "events", "signals not modelled",
                 "signals that found the vCPU thread in user mode or halted"),
    MetricFamily("kvm_bug", "events", "KVM_BUG_ON", "KVM_BUG_ON hits (the VM is dead): the "
                 "sum of kvm_bug.<site>", per_vcpu=False),
    MetricFamily("kvm_bug.{function}", "events", "KVM_BUG_ON by site",
                 "KVM_BUG_ON / TDX_BUG_ON hits by the kernel function they are in (every hit; "
                 "the VM is marked bugged at the first)", per_vcpu=False),
    MetricFamily("kernel_warn", "events", "kernel warnings",
                 "WARN_ON_ONCE / KVM_BUG_ON warnings a run would print (dmesg shows each site "
                 "once per boot): the sum of kernel_warn.<function>", per_vcpu=False),
    MetricFamily("kernel_warn.{function}", "events", "kernel warnings by site",
                 "hits of a WARN_ON_ONCE, or of a KVM_BUG_ON on a VM not yet bugged, by the "
                 "kernel function they are in", per_vcpu=False),
    MetricFamily("tsc_aux_reads", "reads", "guest TSC_AUX reads", "VMX guests' RDPID reads"),
    MetricFamily("tsc_aux_reads.corrupt", "reads", "corrupt guest TSC_AUX reads",
                 "reads that returned another value than KVM meant"),
    # --- findings, time -------------------------------------------------------------------
    MetricFamily("violations.{oracle}", "violations", "violations by oracle",
                 "findings recorded by each oracle or invariant", per_vcpu=False),
    MetricFamily("cpu.{cpu}.ns.{category}", "ns", "CPU time by category",
                 "time each host CPU spent in guest, KVM, VMM, host-task code or idle",
                 per_vcpu=False),
    MetricFamily("sim.duration_ns", "ns", "simulated time", "sim.duration_us in ns",
                 per_vcpu=False),
    MetricFamily("sim.measured_ns", "ns", "measured time", "simulated time after the warm-up",
                 per_vcpu=False),
)

_VCPU_PREFIX = re.compile(r"vm\.[^.]+\.vcpu\.\d+\.")


def _regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for seg in pattern.split("."):
        m = re.fullmatch(r"\{(\w+)\}", seg)
        if m is None:
            parts.append(re.escape(seg))
        elif m.group(1) in PLACEHOLDERS:
            parts.append("(?:" + "|".join(re.escape(v) for v in PLACEHOLDERS[m.group(1)]) + ")")
        else:
            parts.append(r"[^.]+")
    return re.compile(r"\.".join(parts))


_COMPILED = tuple((_regex(f.pattern), f) for f in METRICS)


@lru_cache(maxsize=8192)
def _family_of(name: str) -> MetricFamily | None:
    for regex, fam in _COMPILED:
        if regex.fullmatch(name):
            return fam
    return None


def family(metric: str) -> MetricFamily | None:
    """The declared family of `metric` (a per-vCPU name matches through its prefix)."""
    m = _VCPU_PREFIX.match(metric)
    if m is None:
        return _family_of(metric)
    fam = _family_of(metric[m.end():])
    return fam if fam is not None and fam.per_vcpu else None


def undeclared(metrics: dict[str, object] | list[str]) -> list[str]:
    """The metric names in `metrics` that no family declares (empty for a correct model)."""
    return sorted(k for k in metrics if family(k) is None)


def label(metric: str) -> str:
    """Human label of `metric` with its unit, e.g. ``"WRMSRs by MSR: MSR_STAR [WRMSRs]"``;
    an expression or unknown name is returned as it is."""
    fam = family(metric)
    if fam is None:
        return metric
    m = _VCPU_PREFIX.match(metric)
    name = metric[m.end():] if m else metric
    fixed = fam.pattern.split(".")
    varying = [seg for seg, pat in zip(name.split("."), fixed, strict=False)
               if pat.startswith("{")]
    who = f"{m.group(0)[3:-1]}: " if m else ""
    detail = f": {'.'.join(varying)}" if varying else ""
    return f"{who}{fam.label}{detail} [{fam.unit}]"


def unit(metric: str) -> str | None:
    fam = family(metric)
    return fam.unit if fam else None
