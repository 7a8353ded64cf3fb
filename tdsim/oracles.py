"""The entry oracles: what KVM lets into the guest at VM entry (declared in `tdsim.findings`).

``vcpu_enter_guest`` sets ``vcpu->mode = IN_GUEST_MODE``, disables IRQs and then makes its late
``kvm_vcpu_exit_request()`` check: a kick (``EXITING_GUEST_MODE``), a request bit, a pending
signal, need_resched or notify-resume makes it abort the entry (docs/late-aborts.md, path C).
Whatever became pending *before* that check must have been seen by it; whatever became pending
*after* it reaches a running guest only through an IPI, which makes it exit.  Two oracles state
that independently of the model's run loop (they never call ``kvm_vcpu_exit_request``):

* ``entry_with_exit_request`` -- at VM entry something the late check reads had been pending
  since before the check (``t_late``): the check did not see it, or something decided the
  entry without it.  The finding names what was ignored and when it became pending.
* ``kick_exit_delay`` -- a vCPU kicked at ``t`` (mode switched to ``EXITING_GUEST_MODE``) ran
  guest code past ``max(t + ipi_ns, t_enter)``: the kick's IPI (or the late check, for a kick
  before it) did not end the guest's run within the IPI latency and the entry work still
  ahead when it was kicked.

Bookkeeping: whoever makes one of those conditions pending records when (`ExitWork`,
``vcpu.exit_work``: ``{part: (t_ns, label)}``, written only when the part goes from clear to
pending).  The run loop calls `check_entry` only while ``exit_work`` is non-empty, so a run
in which nothing is raised pays one truth test per VM entry; an entry removes the parts that
are no longer pending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .arch import EXITING_GUEST_MODE

if TYPE_CHECKING:
    from .findings import Findings

ExitWork = dict[str, tuple[int, str]]

# The parts of kvm_vcpu_exit_request(), each with the test that says it is still pending.
KICK, REQUEST, SIGNAL, NEED_RESCHED, NOTIFY_RESUME = (
    "kick", "request", "signal", "need_resched", "notify_resume")


class EntryVcpu(Protocol):
    """What the entry oracles read of a vCPU (`tdsim.kvm_x86.KvmVcpu`)."""

    name: str
    cpu: Any
    costs: Any
    findings: Findings
    exit_work: ExitWork
    mode: int
    requests: int
    sigpending: bool
    need_resched: bool
    notify_resume: bool
    t_late: int
    t_enter: int
    seg_ran: int


def _pending(vcpu: EntryVcpu, part: str) -> bool:
    if part == KICK:
        return vcpu.mode == EXITING_GUEST_MODE
    if part == REQUEST:
        return vcpu.requests != 0
    if part == SIGNAL:
        return vcpu.sigpending
    if part == NEED_RESCHED:
        return vcpu.need_resched
    return vcpu.notify_resume


def check_entry(vcpu: EntryVcpu) -> None:
    """The entry oracles for the VM entry at ``vcpu.t_enter`` that followed the late check at
    ``vcpu.t_late`` (called when the guest exits, with the segment's ``seg_ran`` known)."""
    work = vcpu.exit_work
    t_late = vcpu.t_late
    t_enter = vcpu.t_enter
    for part, (t, label) in list(work.items()):
        if not _pending(vcpu, part):
            del work[part]
            continue
        if part == KICK:
            bound = max(t + vcpu.costs.ipi_ns, t_enter)
            t_out = t_enter + vcpu.seg_ran
            if t_out > bound:
                vcpu.findings.record(
                    "kick_exit_delay", vcpu.cpu.index, vcpu.name,
                    f"kicked at {t}, the guest ran until {t_out}: {t_out - bound} ns past "
                    f"the kick's IPI latency and the entry work ({bound})", cause=(t, label))
        if t < t_late:
            vcpu.findings.record(
                "entry_with_exit_request", vcpu.cpu.index, vcpu.name,
                f"VM entry at {t_enter} with {label} pending since {t}: the late "
                f"kvm_vcpu_exit_request() check at {t_late} should have aborted it",
                cause=(t, label))
            del work[part]  # reported once
