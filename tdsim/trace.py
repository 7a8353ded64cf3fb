"""Event tracing: the one channel through which the model reports what happened, when.

Every model component that reports events is built with the run's tracer, which is ``None``
when tracing is off; every emitting site is written ``if tracer is not None:
tracer.emit(...)``, so tracing that is off costs one attribute test and builds nothing.  The
event kinds and their fields are declared once, in `EVENT_KINDS`; emitting an undeclared kind
or other fields than declared is a tdsim bug and raises (the tests trace every shipped
scenario, so a misspelt event fails a test).

An event is a tuple ``(t_ns, kind, cpu, vcpu, fields)``:

* ``t_ns``  simulated time in integer nanoseconds.  Straight-line work is applied when its
  SimPy timeout is scheduled, so a few events carry a time slightly ahead of the process that
  emitted them (e.g. ``kvm_entry`` at the instant the TD is entered); consumers that need a
  time-ordered stream sort by ``t_ns`` (the sort is stable, so emission order breaks ties).
* ``kind``  one of `EVENT_KINDS`.
* ``cpu``   host CPU index, or -1 when no CPU is involved.
* ``vcpu``  the vCPU's dotted scope (``"td0.vcpu3"``), a host task's name (``"task2"``), or None.
* ``fields`` a dict of JSON-serialisable extras, listed per kind below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# kind -> the fields it carries
EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "kvm_entry": (),                       # TDH.VP.ENTER enters the TD
    "kvm_exit": ("reason", "vp_enter_ret"),  # TD exit: derived reason name, raw status (hex str)
    "tdvmcall": ("leaf",),                 # guest TDVMCALL sub-function name
    "late_abort": ("abort",),              # entry work done but the TD did not run
    "vcpu_load": ("migrated", "prev_cpu"),
    "vcpu_put": ("cause",),                # preempt | kvm_run_return | halt
    "wrmsr": ("msr", "site", "value"),
    # KVM's belief of a user-return MSR (struct kvm_user_return_msrs .curr) changed: via
    # set (kvm_set_user_return_msr, after its WRMSR) | update_cache
    # (kvm_user_return_msr_update_cache: no WRMSR) | user_return (kvm_on_user_return's WRMSR)
    "uret_cache": ("msr", "value", "via"),
    "uret_notifier": ("registered",),      # KVM's user-return notifier (un)registered on a CPU
    "seamcall": ("leaf", "status"),
    "cpu_state": ("what", "thread"),       # what the CPU now runs: guest|kvm|vmm|host_task|idle
    # the vCPU thread: running (in KVM_RUN) | userspace (the VMM) | runnable (waits for a
    # CPU: preempted, or woken) | halt_poll (kvm_vcpu_halt polling on its CPU) | halted
    # (asleep in kvm_vcpu_block) | stopped (by the VMM after a fatal exit, or with the whole
    # VM: it never runs again)
    "vcpu_state": ("state",),
    "sched_switch": ("prev", "next"),
    "cpu_hotplug": ("state",),             # the CPU is now offline | online
    # the VMM's user code changed its thread's GS base (via: arch_prctl | wrgsbase)
    "gs_base": ("value", "via"),
    "kick": ("by",),
    # something kvm_vcpu_exit_request() reads became pending (part: kick | request | signal |
    # need_resched | notify_resume; what: which, e.g. KVM_REQ_NMI)
    "exit_request": ("part", "what"),
    "ipi": ("src_cpu", "dst_cpu", "why"),
    "pi_posted": ("vector", "source"),
    "pi_delivered": ("vector",),
    "userspace_exit": ("reason",),
    "violation": ("invariant", "detail"),
    "nmi_injected": (),                    # kvm_inject_nmi (the VMM or a watchdog)
    "nmi_delivered": (),                   # the TDX module injected PEND_NMI at TD entry
    # a SEPT zap (tdsim.sept; cpu -1, the zapping thread runs outside the model): its
    # SEAMCALLs are "seamcall" events at their return
    "sept_flag": ("value", "leaf"),        # wait_for_sept_zap set / cleared around a retry
    "sept_kick": ("cause", "vcpus"),       # KVM_REQ_OUTSIDE_GUEST_MODE: busy | track, waited for
    "sept_ack": ("cause",),                # that vCPU acked the request (its IRQ window)
    # a scheduled event (tdsim.schedule) is applied: its kind (what), where it was placed (entry
    # segment and landmark, or "t"), and where the vCPU really was (tdsim.choices.position)
    "inject": ("what", "entry", "at", "landed"),
}
_FIELDS = {kind: frozenset(names) for kind, names in EVENT_KINDS.items()}

Event = tuple[int, str, int, "str | None", dict[str, Any]]


class Tracer:
    """Collects events, optionally filtered by kind, CPU and vCPU (or task) name."""

    __slots__ = ("events", "_kinds", "_cpus", "_vcpus")

    def __init__(
        self,
        kinds: Iterable[str] | None = None,
        cpus: Iterable[int] | None = None,
        vcpus: Iterable[str] | None = None,
    ) -> None:
        self.events: list[Event] = []
        self._kinds = frozenset(kinds) if kinds else None
        self._cpus = frozenset(cpus) if cpus else None
        self._vcpus = frozenset(vcpus) if vcpus else None
        if self._kinds:
            unknown = self._kinds - EVENT_KINDS.keys()
            if unknown:
                raise ValueError(f"unknown event kinds: {', '.join(sorted(unknown))}")

    def emit(self, t_ns: int, kind: str, cpu: int, vcpu: str | None, **fields: Any) -> None:
        declared = _FIELDS.get(kind)
        if declared is None or fields.keys() != declared:
            raise ValueError(f"tdsim bug: trace event {kind!r} with fields {sorted(fields)} is "
                             "not declared in tdsim.trace.EVENT_KINDS")
        if self._kinds is not None and kind not in self._kinds:
            return
        if self._cpus is not None and cpu not in self._cpus:
            return
        if self._vcpus is not None and vcpu not in self._vcpus:
            return
        self.events.append((t_ns, kind, cpu, vcpu, fields))

    def sorted_events(self) -> list[Event]:
        return sorted(self.events, key=lambda e: e[0])
