"""Findings: every invariant and oracle tdsim checks, declared once, and the recorder.

A broken invariant of the *modelled* system (host state leaking into user code, a KVM cache
that disagrees with the hardware, a lost interrupt) is a finding, not a crash: it is recorded
with the time, CPU, vCPU and a one-line explanation, counted as ``violations.<name>``, and the
run goes on.  (Bugs in tdsim itself raise.)  Recording a name that `FINDINGS` does not declare
is a tdsim bug and raises, so a misspelt oracle cannot go unnoticed; `tdsim check` and the
scenario schema take the known names from here.

Where each is checked is named in its description; docs/late-aborts.md and
docs/interrupts.md explain the reasoning behind them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import arch

if TYPE_CHECKING:
    from .clock import Environment
    from .trace import Tracer


@dataclass(frozen=True)
class Finding:
    """One declared invariant or oracle."""

    name: str
    kind: str  # "invariant": host state and scheduling; "oracle": aborts, exits, interrupts
    doc: str


FINDINGS: tuple[Finding, ...] = (
    # --- host state (tdsim.invariants) ------------------------------------------------------
    Finding("host_state_leak", "invariant",
            "host user code runs (a task returns to user mode, or a context switch saves a "
            "task's GS base) while a user-return MSR or KERNEL_GS_BASE holds a non-host value"),
    Finding("uret_cache_mismatch", "invariant",
            "with no TD vCPU loaded on the CPU (after vcpu_put, at user return), KVM's "
            "user-return cache (curr) differs from the hardware MSR"),
    Finding("kernel_gs_base_not_restored", "invariant",
            "after vcpu_put the CPU's KERNEL_GS_BASE is not the vCPU thread's own GS base"),
    # --- scheduling (tdsim.host) ------------------------------------------------------------
    Finding("cpu_runs_one_thing", "invariant", "the scheduler put two threads on one CPU"),
    Finding("vcpu_on_one_cpu", "invariant", "the scheduler put one thread on two CPUs"),
    # --- entry aborts and exit handling (tdsim.kvm_tdx, tdsim.kvm_vmx, tdsim.tdx_module) ----
    Finding("guest_msr_corruption", "oracle",
            "a guest reads a user-return MSR it is entitled to (TSC_AUX via RDPID) and sees "
            "another value than KVM meant it to see"),
    Finding("error_status_dispatched", "oracle",
            "KVM dispatched a TDH.VP.ENTER error status to an exit handler as if its low bits "
            "were an exit reason"),
    Finding("spurious_nmi", "oracle", "KVM ran the host NMI handler for a TD exit that was "
            "not an NMI"),
    Finding("spurious_external_interrupt", "oracle",
            "KVM handled an EXTERNAL_INTERRUPT exit although no host interrupt caused it"),
    Finding("tdvmcall_completion", "oracle",
            "a TDVMCALL completed that the guest did not issue, or the TD was re-entered with "
            "its TDVMCALL not completed"),
    Finding("entry_with_exit_request", "oracle",
            "at VM entry the vCPU had a kick, request, signal, need_resched or notify-resume "
            "pending since before the late kvm_vcpu_exit_request() check (tdsim.oracles)"),
    Finding("kick_exit_delay", "oracle",
            "a kicked vCPU kept running guest code longer than the kick's IPI latency plus "
            "the entry work still ahead when it was kicked (tdsim.oracles)"),
    Finding("entry_on_associated_vcpu", "oracle",
            "TDH.VP.ENTER on one CPU for a vCPU the TDX module has associated with another "
            "(KVM must TDH.VP.FLUSH it on the old CPU first)"),
    # --- interrupts, NMIs, SEPT zaps (tdsim.interrupts, tdsim.sept) -------------------------
    Finding("lost_interrupt", "oracle",
            "a vector posted before a TD entry is still pending after it, or a one-shot guest "
            "timer fired and was never re-armed"),
    Finding("stuck_halt", "oracle",
            "a halted vCPU stays blocked although it has a deliverable interrupt or NMI"),
    Finding("nmi_accounting", "oracle",
            "a vCPU's NMIs injected != delivered + coalesced + still outstanding at the end "
            "of the run (the finding names the first injection lost)"),
    Finding("td_entry_during_zap", "oracle",
            "a TD entry while a SEPT zap's tdh_do_no_vcpus needs every vCPU out of the TD"),
    Finding("zap_stuck", "oracle",
            "a KVM_REQ_OUTSIDE_GUEST_MODE kick-and-wait was never acknowledged"),
)

NAMES: frozenset[str] = frozenset(f.name for f in FINDINGS)
INVARIANTS: tuple[str, ...] = tuple(f.name for f in FINDINGS if f.kind == "invariant")
ORACLES: tuple[str, ...] = tuple(f.name for f in FINDINGS if f.kind == "oracle")


class Findings:
    """Records findings: all are counted, the first `max_records` of each name are kept."""

    def __init__(self, env: Environment, tracer: Tracer | None, max_records: int = 50) -> None:
        self.env = env
        self.tracer = tracer
        self.max_records = max_records
        self.counts: Counter[str] = Counter()
        self.records: list[dict[str, Any]] = []

    def record(self, name: str, cpu: int, vcpu: str | None, detail: str,
               cause: tuple[int, str] | None = None, msr: int | None = None) -> None:
        """Record finding `name` now, on host CPU `cpu` (-1: none), for `vcpu` (or a task).
        `cause`: when the model knows it, the event that made the wrong state, as (time,
        what happened); `msr`: the MSR a host-state finding is about.  `tdsim.explain`
        derives the causes the model cannot know cheaply (which event last wrote an MSR or
        KVM's belief of it) from a trace of the same run."""
        if name not in NAMES:
            raise ValueError(f"tdsim bug: finding {name!r} is not declared in "
                             "tdsim.findings.FINDINGS")
        self.counts[name] += 1
        t = self.env.now
        if self.counts[name] <= self.max_records:
            record: dict[str, Any] = {"invariant": name, "t_ns": t, "cpu": cpu,
                                      "vcpu": vcpu, "detail": detail}
            if msr is not None:
                record["msr"] = arch.MSR_NAMES[msr]
            if cause is not None:
                record["cause"] = {"t_ns": cause[0], "what": cause[1]}
            self.records.append(record)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(t, "violation", cpu, vcpu, invariant=name, detail=detail)
