"""TDX vendor code of KVM (arch/x86/kvm/vmx/tdx.c), as ``struct vcpu_tdx``.

Run path: ``tdx_vcpu_load`` (flush on the old CPU when the vCPU moved),
``tdx_prepare_switch_to_guest`` (the strategy's save work; sets ``guest_state_loaded``),
``tdx_vcpu_run`` (PI self-IPI, ``tdx_vcpu_enter_exit -> tdh_vp_enter``, post-exit work),
``tdx_handle_exit`` -> ``handle_tdvmcall``, ``tdx_vcpu_put`` -> ``tdx_prepare_switch_to_host``.
The raw SEAMCALL return (`vp_enter_ret`) and the exit reason KVM derives from it
(`exit_reason`) are kept apart, as in KVM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch, tdvmcall  # tdvmcall (issue 5): TDVMCALL handlers, kvm_run, regs[] layout
from .kvm_x86 import (
    IN_GUEST_MODE, KVM_REQ_NMI, PH_BLOCKED, PH_POLL, PH_SEG, KvmVcpu,
)
from .faults import EPT_VIOLATION_WRITE_QUAL, FAULT_KEYS, ZERO_STEP_GPA
from .sept import tdx_handle_ept_violation
from .tdx_module import TdxModuleArgs

if TYPE_CHECKING:
    from .host import HostCpu

# tdx_to_vmx_exit_reason conversion of a TDVMCALL by R11 (reference §3.5)
_TDVMCALL_TO_EXIT_REASON = {
    arch.TDVMCALL_CPUID: arch.EXIT_REASON_CPUID,
    arch.TDVMCALL_HLT: arch.EXIT_REASON_HLT,
    arch.TDVMCALL_IO: arch.EXIT_REASON_IO_INSTRUCTION,
    arch.TDVMCALL_RDMSR: arch.EXIT_REASON_MSR_READ,
    arch.TDVMCALL_WRMSR: arch.EXIT_REASON_MSR_WRITE,
    arch.TDVMCALL_VE_REQUEST_MMIO: arch.EXIT_REASON_EPT_MISCONFIG,
}

SEG_PI_LATE = 2  # seg_pi value: ON was set after the segment was planned
SEG_SEPT_SPIN = -1  # seg_status: tdx_vcpu_run saw wait_for_sept_zap (no SEAMCALL; issue 4)

# issue 3: statuses tdx_to_vmx_exit_reason accepts (reference §3.5) and error bits (§1.5)
_VALID = arch.TDX_EXIT_REASON_VALID_STATUSES
_ERROR_OR_NR = arch.TDX_ERROR | arch.TDX_NON_RECOVERABLE
_STATUS = arch.TDX_SEAMCALL_STATUS_MASK

_EXIT_KEYS = {r: f"exits.reason.{n}" for r, n in arch.EXIT_REASON_NAMES.items()}
# issue 3: basic reasons tdx_handle_exit hands to handle_tdvmcall (after the TDCALL
# conversion), and those dispatched to a handler by reason (reference §1.5 step 6; the
# NMI/IRQ paths have their own oracles)
_TDVMCALL_REASONS = frozenset({
    arch.EXIT_REASON_CPUID, arch.EXIT_REASON_HLT, arch.EXIT_REASON_IO_INSTRUCTION,
    arch.EXIT_REASON_MSR_READ, arch.EXIT_REASON_MSR_WRITE, arch.EXIT_REASON_EPT_MISCONFIG,
    arch.EXIT_REASON_VMCALL, arch.EXIT_REASON_TDCALL,
})
_DISPATCHED = _TDVMCALL_REASONS | {arch.EXIT_REASON_EPT_VIOLATION,
                                   arch.EXIT_REASON_OTHER_SMI}
# issue 4: EXTERNAL_INTERRUPT exits by the host interrupt that caused them
_IRQ_EXIT_KEYS = {w: f"irq_exits.{w}" for w in
                  ("tick", "timer", "kick", "resched", "flush_ipi", "other")}


class VcpuTdx(KvmVcpu):
    """struct vcpu_tdx (with its struct vcpu_vt and the module-side per-vCPU state)."""

    def __init__(self, sim, vm, index, pin, guest) -> None:
        super().__init__(sim, vm, index, pin)
        self.guest = guest
        self.msr_host_kernel_gs_base = 0  # vt->msr_host_kernel_gs_base
        self.guest_entered = False        # v6.16's flag (free for strategies)
        self.vp_enter_args = TdxModuleArgs()
        self.vp_enter_ret = 0             # raw return of the last TDH.VP.ENTER
        self.exit_reason = 0              # vt->exit_reason, derived by KVM
        # posted-interrupt descriptor
        self.pir = 0                      # 256-bit request bitmap
        self.pi_on = False
        self.seg_pi = False  # ON seen at this entry: True (planned) or SEG_PI_LATE
        self.seg_status = arch.TDX_SUCCESS
        self.seg_exit = None              # issue 3: injected exit status of an entered TD
        self.seg_fault = None             # issue 3: kind of the injected module outcome
        # TDX module's view of this vCPU
        self.module_assoc_cpu = None      # LP the vCPU is associated with
        self.module_fields: dict[str, int] = {}
        self.pending_completion = None    # complete_userspace_io callback
        tdvmcall.init_vcpu(self)  # issue 5: kvm_run, regs[] and the layout, MapGPA progress
        # issue 4 (tdsim.interrupts): vector -> (t_posted, source) of what the PIR holds;
        # shootdowns waiting for this vCPU's ack; NMI state (vcpu->arch.nmi_queued /
        # nmi_pending; time of the oldest undelivered NMI); a host NMI cut this segment;
        # (outside_ack, the kick-and-wait's event, is in KvmVcpu)
        self.pi_src: dict[int, tuple[int, str]] = {}
        self.sd_waiters: list = []
        self.nmi_queued = 0
        self.nmi_pending = 0
        self.nmi_t0 = None
        self.seg_host_nmi = False
        self.t_seamcall = 0
        self.oneshot_period = 0  # one-shot (TSC-deadline) guest timer period, 0 = not one-shot
        self.timer_gen = 0
        self.timer_deadline = 0  # issue 4: deadline of the last timer that fired

    def host_gsbase(self) -> int:
        """current->thread.gsbase of the vCPU thread (host KERNEL_GS_BASE to restore)."""
        return self.gsbase

    # --- load / put --------------------------------------------------------------------
    def vcpu_load_vendor(self, cpu: "HostCpu") -> None:
        """tdx_vcpu_load: if the vCPU last ran on another CPU, tdx_flush_vp_on_cpu sends a
        synchronous IPI there to run TDH.VP.FLUSH; then join this CPU's list.

        Simplification: the flush's time is charged to this (waiting) CPU; the old CPU only
        sees the call-function IPI as a host interrupt."""
        old = self.cpu_index
        sim = self.sim
        if old != -1 and old != cpu.index:
            old_cpu = sim.cpus[old]
            old_cpu.host_irq("flush_ipi")
            sim.module.tdh_vp_flush(self, old_cpu)
            cpu.acc += sim.c_ipi + sim.c_tdh_vp_flush
            if self in old_cpu.associated_tdvcpus:
                old_cpu.associated_tdvcpus.remove(self)
            self.cpu_index = -1
            self.stat["migrations"] += 1
        if self.cpu_index != cpu.index:
            cpu.associated_tdvcpus.append(self)
            self.cpu_index = cpu.index

    def prepare_switch_to_guest(self, cpu: "HostCpu") -> None:
        """tdx_prepare_switch_to_guest (called only while not guest_state_loaded)."""
        self.sim.strategy.prepare_switch_to_guest(self, cpu)
        self.guest_state_loaded = True

    def vcpu_put_vendor(self, cpu: "HostCpu") -> None:
        """tdx_vcpu_put -> tdx_prepare_switch_to_host."""
        if self.guest_state_loaded:
            self.stat["host_state_reload"] += 1
            self.sim.strategy.prepare_switch_to_host(self, cpu)
            self.guest_state_loaded = False

    # --- tdx_vcpu_run ------------------------------------------------------------------
    def vcpu_run_vendor(self, cpu: "HostCpu", late: int) -> int:
        """tdx_vcpu_run up to TDH.VP.ENTER, planned: sets the segment's landmarks and returns
        its length (entry work + SEAMCALL + guest run + TD exit).  Nothing the module does
        is applied yet; `vcpu_exit_vendor` applies it at the exit."""
        sim = self.sim
        now = sim.env.now
        self.mode = IN_GUEST_MODE
        if self.vm.wait_for_sept_zap:
            # issue 4, minimal abort path D (reference §1.3 D): another thread retries a
            # SEPT-zap SEAMCALL; return EXIT_FASTPATH_EXIT_HANDLED without a SEAMCALL.
            self.seg_status = SEG_SEPT_SPIN
            self.seg_pi = False
            self.t_enter = self.t_guest_end = now + late
            return late
        # PI descriptor ON -> self-IPI POSTED_INTR_VECTOR; recognised at TD entry.
        self.seg_pi = self.pi_on
        self.t_seamcall = now + late  # issue 4: when TDH.VP.ENTER is issued
        status = sim.module.tdh_vp_enter_check(self, cpu)
        self.seg_exit = None
        self.seg_fault = None
        if status == arch.TDX_SUCCESS:
            faults = sim.faults
            if faults.module_on:  # issue 3: injected module outcomes (aborts E, F, G)
                status, self.seg_exit, self.seg_fault = faults.vp_enter_outcome(self)
        else:
            self.seg_fault = "vcpu_associated"
        self.seg_status = status
        if status != arch.TDX_SUCCESS:
            self.t_enter = self.t_guest_end = now + late + sim.c_seamcall
            return late + sim.c_seamcall
        entry = sim.module.entry_cost(self, cpu) + self.regs_entry_copy_ns  # issue 5
        if self.seg_exit is not None:
            # issue 3: the TD is entered and exits at once with the injected status
            self.t_enter = self.t_guest_end = now + late + entry
            return late + entry + sim.c_td_exit
        if self.oneshot_period:  # issue 4: the timer handler re-arms before anything else
            sim.irq.plan_entry(self)
        if (self.seg_pi and sim.lapic_timer_advance_ns
                and arch.LOCAL_TIMER_VECTOR in self.pi_src):
            # issue 4: kvm_wait_lapic_expire (after the late check, IRQs off): spin until
            # the deadline of the early-fired timer
            wait = self.timer_deadline - (now + late)
            if wait > 0:
                self.stat["lapic.expire_waits"] += 1
                self.stat["lapic.expire_wait_ns"] += wait
                late += wait  # (vcpu_run's t_late keeps its own value)
        g = self.guest.remaining_ns
        if self.seg_pi:
            g += sim.c_guest_irq
        self.t_enter = now + late + entry
        self.t_guest_end = self.t_enter + g
        return late + entry + g + sim.c_td_exit

    def vcpu_run_cancel(self, cpu: "HostCpu") -> None:
        """The planned entry was cut at the late check: nothing of it happened."""
        self.seg_pi = False

    def vcpu_exit_vendor(self, cpu: "HostCpu", irq: bool) -> int:
        """The rest of tdx_vcpu_run after TDH.VP.ENTER returned, then tdx_handle_exit.

        `irq`: the TD exited early for a host interrupt (EXTERNAL_INTERRUPT)."""
        sim = self.sim
        module = sim.module
        stat = self.stat
        tracer = sim.tracer
        guest = self.guest
        ack = self.outside_ack  # issue 4: a kick-and-wait waits for this vCPU's IRQ window
        if ack is not None:
            self.outside_ack = None
            ack.succeed()
        status = self.seg_status
        if status == SEG_SEPT_SPIN:
            return self.sept_spin_exit(cpu)
        if status != arch.TDX_SUCCESS or self.seg_exit is not None:
            self.seg_pi = False
            ret = self.vcpu_exit_fault(cpu, status)  # issue 3: injected module outcomes
        else:
            if guest.awaiting:  # issue 3 oracle
                sim.invariants.record("tdvmcall_completion", cpu.index, self.name,
                                      f"TD entered with its TDVMCALL ({guest.kind}) not "
                                      "completed")
            planned_pi = self.seg_pi is True  # its handler ran first, inside the planned run
            if self.seg_pi:
                if self.seg_pi == SEG_PI_LATE:  # handler time not in the planned run
                    guest.irq_debt_ns += sim.c_guest_irq
                self.seg_pi = False  # issue 4: done (pi_post tests it)
                self.deliver_pi(cpu, self.t_enter)
            # issue 4: PEND_NMI is injected by the module at entry; oracles
            if self.module_fields.get("PEND_NMI", 0):
                sim.irq.deliver_nmi(self, self.t_enter)
            if self.pi_src and not (irq and self.seg_d2 == 0):
                # (an entry cut by a pending host interrupt runs no guest instruction; the
                # hrtimer's own vector is posted by that interrupt's handler, after it)
                sim.irq.check_entry(self)
            if self.vm.zap_excl_t0 <= self.t_enter < self.vm.zap_excl_t1:
                sim.invariants.record("td_entry_during_zap", cpu.index, self.name,
                                      f"TD entry at {self.t_enter} while a SEPT zap needs "
                                      f"every vCPU out (since {self.vm.zap_excl_t0})")
            if irq:
                # A PI seen at planning ran its handler first (it is in the planned run), so
                # the compute period advanced only by what followed it; never below 0, which
                # would plan the next run to end before its entry (found by a trace property).
                ran = self.seg_d2 - (sim.c_guest_irq if planned_pi else 0)
                guest.remaining_ns -= max(0, ran)
                reason = arch.EXIT_REASON_EXTERNAL_INTERRUPT
                if self.seg_host_nmi:  # issue 4: a host NMI, not an interrupt
                    self.seg_host_nmi = False
                    reason = arch.EXIT_REASON_EXCEPTION_NMI
            elif guest.kind == "ept_violation":  # issue 4: a private-page fault (tdsim.sept)
                guest.remaining_ns = 0
                reason = arch.EXIT_REASON_EPT_VIOLATION
                guest.ept_violation_regs(self.vp_enter_args)
            else:
                guest.remaining_ns = 0
                reason = arch.EXIT_REASON_TDCALL
                guest.tdvmcall_regs(self.vp_enter_args)
            ret = module.tdh_vp_enter_exit(self, cpu, reason)
            if tracer is not None:
                tracer.emit(sim.env.now, "seamcall", cpu.index, self.name,  # at its return
                            leaf="TDH_VP_ENTER", status="TDX_SUCCESS")
                tracer.emit(self.t_enter, "kvm_entry", cpu.index, self.name)
        if self.regs_copy:  # issue 5: "copy" layout: vp_enter_args -> regs[]
            tdvmcall.regs_after_exit(self, cpu)
        self.vp_enter_ret = ret
        enter_exit = sim.strategy_enter_exit
        if enter_exit is not None:
            enter_exit(self, cpu, ret)
        self.exit_reason = exit_reason = self.tdx_to_vmx_exit_reason(ret)
        basic = exit_reason & 0xFFFF
        if basic <= arch.EXIT_REASON_EXTERNAL_INTERRUPT:  # issue 3: NMI / IRQ irqoff work
            self.handle_exit_irqoff(cpu, irq, basic)
        cpu.acc += sim.c_exit_handling
        stat["exits"] += 1
        stat[_EXIT_KEYS.get(basic, "exits.reason.INVALID")] += 1
        if tracer is not None:
            tracer.emit(sim.env.now, "kvm_exit", cpu.index, self.name,
                        reason=arch.EXIT_REASON_NAMES.get(basic, "?"),
                        vp_enter_ret=f"{ret:#x}")
        # tdx_exit_handlers_fastpath (reference §1.4 steps 10-12): EXIT_FASTPATH_EXIT_HANDLED
        # only for OPERAND_BUSY (a raw 49, a software error, a failed VM entry: NONE).
        return self.tdx_handle_exit(cpu)

    def vcpu_exit_fault(self, cpu: "HostCpu", status: int) -> int:
        """issue 3: an injected module outcome.  Refused entry (aborts E, F): the SEAMCALL
        returned without loading guest state.  Otherwise the TD was entered and exited at
        once with the injected status (the module zeroes the GPRs it does not expose).
        Returns vp_enter_ret."""
        module = self.sim.module
        if status != arch.TDX_SUCCESS:
            ret = module.tdh_vp_enter_fail(self, cpu, status, self.seg_fault)
            self.count_abort(cpu, self.seg_fault)
            if status == arch.EXIT_REASON_EPT_VIOLATION:  # abort F: synthesized registers
                args = self.vp_enter_args
                args.clear()
                args.rcx = EPT_VIOLATION_WRITE_QUAL
                args.r8 = ZERO_STEP_GPA
            return ret
        ret = module.tdh_vp_enter_exit_status(self, cpu, self.seg_exit)
        self.vp_enter_args.clear()
        if self.seg_fault == "failed_vmentry":
            self.count_abort(cpu, "failed_vmentry")
        else:
            self.stat[FAULT_KEYS[self.seg_fault]] += 1
        return ret

    def handle_exit_irqoff(self, cpu: "HostCpu", irq: bool, basic: int) -> None:
        """issue 3: the irqoff exit handling (tdx_vcpu_enter_exit's NMI check and
        vmx_handle_exit_irqoff), acting on the derived basic reason.  tdsim never makes a
        TD exit for a real NMI, so any NMI-handler run is spurious; an EXTERNAL_INTERRUPT
        reason is genuine only for a successful exit caused by a host interrupt.
        Simplification: the NMI check's interruption-info test is taken as passing."""
        if basic == arch.EXIT_REASON_EXCEPTION_NMI:
            if irq and (self.vp_enter_ret & _STATUS) == arch.TDX_SUCCESS:
                return  # issue 4: a real host NMI made the TD exit
            cpu.acc += self.sim.c_host_irq
            self.sim.invariants.record(
                "spurious_nmi", cpu.index, self.name,
                f"host NMI handler run for vp_enter_ret={self.vp_enter_ret:#x} (no NMI)")
        elif basic == arch.EXIT_REASON_EXTERNAL_INTERRUPT and (
                not irq or (self.vp_enter_ret & _STATUS) != arch.TDX_SUCCESS):
            self.sim.invariants.record(
                "spurious_external_interrupt", cpu.index, self.name,
                f"EXTERNAL_INTERRUPT exit handled for vp_enter_ret={self.vp_enter_ret:#x} "
                "with no host interrupt")

    def tdx_to_vmx_exit_reason(self, ret: int) -> int:
        """tdx_to_vmx_exit_reason: bits 15:0 only for the five valid statuses; then the
        TDCALL conversion by R10/R11 (reference §3.5).

        issue 3: with ``[kvm] exit_reason = "raw"`` the low 32 bits are taken whatever the
        status, as the early ``union tdx_exit_reason`` code did."""
        if (ret & _STATUS) not in _VALID and not self.sim.exit_reason_raw:
            return arch.EXIT_REASON_INVALID
        reason = ret & 0xFFFFFFFF
        if reason == arch.EXIT_REASON_TDCALL:
            args = self.vp_enter_args
            if args.r10:
                return arch.EXIT_REASON_VMCALL
            return _TDVMCALL_TO_EXIT_REASON.get(args.r11, arch.EXIT_REASON_TDCALL)
        return reason

    def sept_spin_exit(self, cpu: "HostCpu") -> int:
        """issue 4, minimal abort path D: tdx_vcpu_run returned EXIT_FASTPATH_EXIT_HANDLED
        without a SEAMCALL (no exit reason); the IRQ window, then handle_exit returns 1."""
        stat = self.stat
        self.count_abort(cpu, "wait_for_sept_zap")  # issue 3: late_abort.* and its trace
        stat["sept.wait_ns"] += self.sim.env.now - self.t_seg0 + self.sim.c_exit_handling
        cpu.acc += self.sim.c_exit_handling
        return 1

    # --- interrupts --------------------------------------------------------------------
    def deliver_pi(self, cpu: "HostCpu", t: int) -> None:
        """The CPU processes the PIR into the virtual APIC (at entry or while running);
        the guest runs its handler (charged to its next compute)."""
        self.pi_on = False
        self.pir = 0
        self.stat["pi_delivered"] += 1
        self.sim.irq.taken(self, t)  # issue 4: latency per source, shootdown acks
        if self.sim.tracer is not None:
            self.sim.tracer.emit(t, "pi_delivered", cpu.index, self.name, vector=-1)

    def pi_post(self, vector: int, source: str) -> None:
        """__vmx_deliver_posted_interrupt: set PIR; set ON; notify or wake."""
        bit = 1 << vector
        if (self.seg_pi and self.seg_status == arch.TDX_SUCCESS
                and self.t_enter <= self.sim.env.now):
            # issue 4: the entry's PI processing (applied lazily at the exit) has already
            # happened: the guest runs (or has exited) with ON clear and the PIR drained.
            if self.seg_pi == SEG_PI_LATE:
                self.guest.irq_debt_ns += self.sim.c_guest_irq
            self.seg_pi = False
            self.deliver_pi(self.cpu, self.t_enter)
        if self.pir & bit:
            self.stat["pi_coalesced"] += 1
            return
        self.pir |= bit
        self.stat["pi_posted"] += 1
        self.sim.irq.posted(self, vector, source)  # issue 4
        if self.sim.tracer is not None:
            cpu = self.cpu
            self.sim.tracer.emit(self.sim.env.now, "pi_posted", cpu.index if cpu else -1,
                                 self.name, vector=vector, source=source)
        if self.pi_on:
            return
        self.pi_on = True
        if self.phase == PH_SEG and self.seg_status == arch.TDX_SUCCESS:
            now = self.sim.env.now
            if now < self.t_enter:
                # Before entry: either tdx_vcpu_run's ON check is still ahead (self-IPI), or
                # the vCPU is IN_GUEST_MODE with IRQs off and the notification IPI stays
                # pending; both are recognised at TD entry.  (Posted before the late check,
                # an abort there leaves ON set for the next entry.)
                if not self.seg_pi:
                    self.seg_pi = SEG_PI_LATE
            elif now < self.t_guest_end:
                # Notification IPI to a running TD: processed without a TD exit when it
                # arrives (issue 4: after the IPI latency; if the TD has exited by then, ON
                # stays set for the next entry).  The handler's time delays the guest's
                # next TDVMCALL (paid in its next period).
                seg0 = self.t_seg0
                ev = self.sim.env.timeout(self.sim.c_ipi)
                ev.callbacks.append(lambda _e: self.pi_notification(seg0))
        else:  # issue 4: kvm_vcpu_wake_up whenever not delivered (a no-op unless halting)
            self.kvm_vcpu_wake_up()

    def pi_notification(self, seg0: int) -> None:
        """POSTED_INTR_VECTOR reaches the CPU of a vCPU that was in the TD when the
        interrupt was posted: if it still runs the same entry, the CPU processes the PIR
        without a TD exit; otherwise the IPI is a plain host interrupt (already handled as
        such by the run loop) and ON waits for the next entry."""
        now = self.sim.env.now
        if (self.phase == PH_SEG and self.t_seg0 == seg0 and self.pi_on
                and self.t_enter <= now < self.t_guest_end):
            self.guest.irq_debt_ns += self.sim.c_guest_irq
            self.deliver_pi(self.cpu, now)

    def has_events(self, cpu: "HostCpu") -> bool:
        """kvm_vcpu_has_events for a halted TD vCPU: an NMI (KVM_REQ_NMI / nmi_pending), or,
        if tdx_interrupt_allowed, tdx_protected_apic_has_interrupt: PI pending, else (HLT with
        interrupts enabled) TDH.VP.RD of the state details."""
        if self.requests & KVM_REQ_NMI or self.nmi_pending:  # issue 4: kvm_vcpu_has_events
            return True
        if not self.tdx_interrupt_allowed():  # issue 4: HLT with interrupts disabled
            return False
        if self.pi_on or self.pir:
            return True
        if self.vp_enter_args.r12 == 0 and self.exit_reason == arch.EXIT_REASON_HLT:
            _, details = self.sim.module.tdh_vp_rd(self, cpu, "STATE_DETAILS_NON_ARCH")
            return bool(details & 1)
        return False

    def tdx_interrupt_allowed(self) -> bool:
        """tdx_interrupt_allowed: false only after a HLT TDVMCALL with R12 != 0 (the guest
        halted with interrupts disabled); otherwise KVM assumes interrupts are allowed."""
        return not (self.exit_reason == arch.EXIT_REASON_HLT and self.vp_enter_args.r12)

    # --- tdx_handle_exit ---------------------------------------------------------------
    def tdx_handle_exit(self, cpu: "HostCpu") -> int:
        """tdx_handle_exit (reference §1.5): returns 1 to re-enter, 0 to exit to userspace,
        < 0 for an error.  The status checks read the raw `vp_enter_ret`; the dispatch reads
        the derived `exit_reason`."""
        ret = self.vp_enter_ret
        reason = self.exit_reason
        if (ret & _STATUS) == arch.TDX_OPERAND_BUSY:
            # tdx_exit_handlers_fastpath -> EXIT_FASTPATH_EXIT_HANDLED, the run loop
            # retries TDH.VP.ENTER (reference §7.2); e.g. TDH.MEM.TRACK holds the TD epoch.
            self.stat["vp_enter_busy"] += 1
            return 1
        basic = reason & 0xFFFF
        if ret >> 32 or ret == arch.EXIT_REASON_EPT_MISCONFIG or (
                reason & arch.VMX_EXIT_REASONS_FAILED_VMENTRY):
            r = self.tdx_handle_exit_status(cpu, ret, reason, basic)
            if r is not None:
                return r
        if basic in _TDVMCALL_REASONS:
            return self.handle_tdvmcall(cpu, basic)
        if basic == arch.EXIT_REASON_EXTERNAL_INTERRUPT:
            cpu.acc += self.sim.c_host_irq  # handle_exit_irqoff ran the host handler
            self.stat["irq_exits"] += 1
            self.stat[_IRQ_EXIT_KEYS.get(self.seg_irq_why, "irq_exits.other")] += 1  # issue 4
            return 1
        if basic == arch.EXIT_REASON_EPT_VIOLATION:
            if self.seg_fault == "zero_step":  # issue 3: the module's synthesized exit
                return self.tdx_handle_zero_step_exit(cpu)
            return tdx_handle_ept_violation(self, cpu)  # issue 4: private fault, local retries
        if basic == arch.EXIT_REASON_TRIPLE_FAULT:
            self.run_exit_reason = arch.KVM_EXIT_SHUTDOWN
            return 0
        if basic == arch.EXIT_REASON_EXCEPTION_NMI:  # issue 4: host NMI, handled at exit
            cpu.acc += self.sim.c_host_nmi
            return 1
        if basic == arch.EXIT_REASON_OTHER_SMI:
            return 1
        self.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR  # unhandled exit
        return 0

    def tdx_handle_exit_status(self, cpu: "HostCpu", ret: int, reason: int,
                               basic: int) -> int | None:
        """issue 3: tdx_handle_exit's checks of a non-success return (reference §1.5 steps
        2-5), in order; None = go on to the dispatch.  KVM_BUG_ON marks the VM bugged (every
        vCPU then leaves with -EIO at its next request check)."""
        faults = self.sim.faults
        if ret == arch.EXIT_REASON_EPT_MISCONFIG:
            # a genuine EPT misconfig must not happen for a TD (§3.5 collision hazard)
            faults.kvm_vm_bugged(self.vm, self)
            self.run_exit_reason = 0
            return -arch.EIO
        if (ret & arch.TDX_SW_ERROR) == arch.TDX_SW_ERROR:
            faults.kvm_vm_bugged(self.vm, self)
            self.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR
            return 0
        if reason != arch.EXIT_REASON_INVALID and reason & arch.VMX_EXIT_REASONS_FAILED_VMENTRY:
            self.run_exit_reason = arch.KVM_EXIT_FAIL_ENTRY
            return 0
        if ret & _ERROR_OR_NR and basic != arch.EXIT_REASON_TRIPLE_FAULT:
            self.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR
            return 0
        if (ret & _STATUS) not in _VALID and basic in _DISPATCHED:
            self.sim.invariants.record(
                "error_status_dispatched", cpu.index, self.name,
                f"vp_enter_ret={ret:#x} dispatched as exit reason "
                f"{arch.EXIT_REASON_NAMES.get(basic, basic)}")
        return None

    def tdx_handle_zero_step_exit(self, cpu: "HostCpu") -> int:
        """tdx_handle_ept_violation for the module's synthesized zero-step exit (abort F): the
        page is mapped by the fault path; the guest re-executes the instruction."""
        cpu.acc += self.sim.c_ept_violation
        self.stat["ept_violation"] += 1
        return 1

    # issue 5: handle_tdvmcall and the converted-reason handlers (tdx_emulate_*), and the
    # complete_userspace_io callbacks, live in `tdsim.tdvmcall` (bound here as methods:
    # handle_tdvmcall(cpu, basic) -> 1 re-enter / 0 userspace; complete_userspace_io(cpu)
    # -> 0 to go back to userspace, e.g. for MapGPA's next chunk).
    handle_tdvmcall = tdvmcall.handle_exit_tdvmcall
    complete_userspace_io = tdvmcall.complete_userspace_io

    def kvm_check_requests(self, cpu: "HostCpu") -> int:
        """Request processing; issue 4: KVM_REQ_NMI -> process_nmi, then (KVM_REQ_EVENT)
        tdx_inject_nmi's TDH.VP.WR of PEND_NMI, before prepare_switch_to_guest."""
        if self.requests & KVM_REQ_NMI:
            self.sim.irq.process_nmi(self, cpu)
        return super().kvm_check_requests(cpu)

    def vmm_service_ns(self) -> int:
        """The userspace VMM answers the exit (`tdsim.vmm`); its service time."""
        return self.sim.vmm.handle_exit(self)
