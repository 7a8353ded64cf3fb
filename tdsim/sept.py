"""SEPT zaps of a TD's private memory and their contention with TDH.VP.ENTER (tdx.c's
private-SPTE removal path; docs/interrupts.md).

One zap (``tdx_sept_zap``) models KVM removing private pages, e.g. on a private->shared
conversion, with ``kvm->mmu_lock`` held for write:

1. TDH.MEM.RANGE.BLOCK;
2. ``tdx_track``: TDH.MEM.TRACK, which holds the TD epoch lock exclusively -- a TDH.VP.ENTER
   issued meanwhile (judged at the SEAMCALL instant of an entry planned after the lock was
   taken) fails with TDX_OPERAND_BUSY (operand 0xA9) and the vCPU's run loop
   retries (``vp_enter_busy``) -- then ``kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)``:
   every vCPU in guest mode is kicked and the caller waits until each has passed its IRQ
   window after the TD exit (``kick_and_wait``);
3. per page TDH.MEM.PAGE.REMOVE; with probability ``remove_busy_p`` it returns
   TDX_OPERAND_BUSY (operand 0x92, the SEPT lock) and goes through ``tdh_do_no_vcpus``: set
   ``wait_for_sept_zap``, kick-and-wait again, retry (which succeeds: no vCPU is in the TD and
   none can enter), clear the flag.  While the flag is set every vCPU of the TD spins through
   ``vcpu_enter_guest`` (abort path D, ``late_abort.wait_for_sept_zap``; time in
   ``sept.wait_ns``).

Simplifications: the zapping thread runs on a housekeeping CPU outside the model (its time is
not in any modelled CPU); one zap at a time per TD (mmu_lock is not contended by anything
else in the model); a vCPU that planned its entry before the flag was set but had not yet
reached the late exit-request check is aborted there as a kick (the real one would see the
flag a few hundred ns later in tdx_vcpu_run).

Private-page faults (``private_fault_hz``; the local retry loop of
``tdx_handle_ept_violation``): the guest's EPT
violation on a private page not yet mapped, and KVM's local retry loop while TDH.MEM.PAGE.AUG
is busy (``aug_busy_p``).

Oracles: ``zap_stuck`` (a kick-and-wait never acked) and ``td_entry_during_zap``: no TD entry
between the end of tdh_do_no_vcpus's kick-and-wait and the clearing of ``wait_for_sept_zap``
(checked at each TD entry against the VM's ``zap_excl_t0`` / ``zap_excl_t1``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from simpy import AllOf

from . import arch
from .arch import OUTSIDE_GUEST_MODE
from .host import ProcessGenerator
from .rng import exp_ns
from .tdx_module import seamcall_keys

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs, SeptConfig
    from .findings import Findings
    from .host import HostCpu, Stat
    from .kvm_tdx import KvmTdx, VcpuTdx

NEVER = 1 << 62


class SeptZapper:
    """The zapping side of one TD (kvm_tdx's private-SPTE removal path)."""

    def __init__(self, env: Environment, vm: KvmTdx, cfg: SeptConfig, costs: Costs,
                 rng: random.Random, stat: Stat) -> None:
        self.env = env
        self.vm = vm
        self.costs = costs
        self.rate_hz = cfg.zap_hz
        self.pages = cfg.zap_pages
        self.busy_p = cfg.remove_busy_p
        self.rng = rng
        self.stat = stat
        self.waiting_since = -1  # start of the kick-and-wait in progress, -1 = none

    def count(self, leaf: int, status: int) -> None:
        """Count a SEAMCALL of the zapping thread (host-wide counters)."""
        self.stat[seamcall_keys(leaf, status)[1]] += 1  # (seamcall.<LEAF>: the sum)

    def run(self) -> ProcessGenerator:
        env = self.env
        mean = 1e9 / self.rate_hz
        while True:
            yield env.timeout(exp_ns(self.rng, mean))
            yield from self.tdx_sept_zap()

    def tdx_sept_zap(self) -> ProcessGenerator:
        """tdx_sept_remove_private_spte and friends, under mmu_lock (write)."""
        env = self.env
        costs = self.costs
        vm = self.vm
        stat = self.stat
        t0 = env.now
        stat["sept.zaps"] += 1
        # tdx_track's TDH.MEM.TRACK will hold the epoch lock exclusively right after the
        # BLOCK; published now so that entries planned meanwhile see it at their SEAMCALL
        vm.epoch_lock_t0 = t0 + costs.tdh_mem_range_block_ns
        vm.epoch_lock_t1 = vm.epoch_lock_t0 + costs.tdh_mem_track_ns
        yield env.timeout(costs.tdh_mem_range_block_ns)
        self.count(arch.TDH_MEM_RANGE_BLOCK, arch.TDX_SUCCESS)
        yield env.timeout(costs.tdh_mem_track_ns)
        self.count(arch.TDH_MEM_TRACK, arch.TDX_SUCCESS)
        yield from self.kick_and_wait()
        for _ in range(self.pages):
            yield env.timeout(costs.tdh_mem_page_remove_ns)
            if self.rng.random() < self.busy_p:
                self.count(arch.TDH_MEM_PAGE_REMOVE,
                           arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_SEPT)
                stat["sept.remove_busy"] += 1
                yield from self.tdh_do_no_vcpus(arch.TDH_MEM_PAGE_REMOVE,
                                                costs.tdh_mem_page_remove_ns)
            else:
                self.count(arch.TDH_MEM_PAGE_REMOVE, arch.TDX_SUCCESS)
        stat["sept.zap_ns"] += env.now - t0

    def tdh_do_no_vcpus(self, leaf: int, cost_ns: int) -> ProcessGenerator:
        """tdh_do_no_vcpus: after OPERAND_BUSY, block entries (wait_for_sept_zap), kick
        every vCPU out and wait, retry the SEAMCALL, unblock."""
        env = self.env
        vm = self.vm
        t0 = env.now
        vm.wait_for_sept_zap = True
        yield from self.kick_and_wait()
        vm.zap_excl_t0 = env.now
        vm.zap_excl_t1 = NEVER
        yield env.timeout(cost_ns)
        self.count(leaf, arch.TDX_SUCCESS)
        vm.zap_excl_t1 = env.now
        vm.wait_for_sept_zap = False
        self.stat["sept.no_vcpus_ns"] += env.now - t0

    def kick_and_wait(self) -> ProcessGenerator:
        """kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE): NO_ACTION | WAIT |
        NO_WAKEUP.  Every vCPU not OUTSIDE_GUEST_MODE is kicked and waited for: the wait ends
        when it passes its IRQ window."""
        env = self.env
        events = []
        for vcpu in self.vm.vcpus:
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue  # no IPI, nothing to wait for
            if vcpu.outside_ack is None:
                vcpu.outside_ack = env.event()
            events.append(vcpu.outside_ack)
            vcpu.kvm_request_outside_guest_mode()
        self.stat["sept.kicks"] += len(events)
        if events:
            t0 = self.waiting_since = env.now
            yield AllOf(env, events)
            self.waiting_since = -1
            self.stat["sept.kick_wait_ns"] += env.now - t0


STUCK_WAIT_NS = 100_000


def check_end(findings: Findings, now: int, zappers: list[SeptZapper]) -> None:
    """Oracle ``zap_stuck``: a kick-and-wait still waiting at the end of the run after
    `STUCK_WAIT_NS` (an ack is due one IPI and one TD exit after the kick)."""
    for z in zappers:
        if z.waiting_since >= 0 and now - z.waiting_since > STUCK_WAIT_NS:
            waited = [v for v in z.vm.vcpus
                      if v.outside_ack is not None and not v.outside_ack.triggered]
            first = waited[0] if waited else None
            names = ", ".join(v.name for v in waited) or "none"
            findings.record("zap_stuck", first.cpu.index if first else -1,
                            first.name if first else None,
                            f"{z.vm.name}: KVM_REQ_OUTSIDE_GUEST_MODE kick-and-wait "
                            f"waiting since {z.waiting_since} for {names}",
                            cause=(z.waiting_since, "KVM_REQ_OUTSIDE_GUEST_MODE kick of "
                                   f"{names}, never acknowledged"))


def private_fault_retry_loop(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """The private-GPA half of tdx_handle_ept_violation (`tdsim.vt`) for the guest's
    statistical private-fault stream: __vmx_handle_ept_violation ->
    kvm_mmu_page_fault (forced write) -> TDP MMU fault path -> TDH.MEM.PAGE.AUG, with TDX's
    local retry loop: while the result is RET_PF_RETRY (AUG returned OPERAND_BUSY) KVM
    retries *without re-entering the TD* -- re-entering to re-fault would feed the module's
    zero-step counter -- bailing out (r = 1, the guest re-faults) if a signal is pending or
    ``kvm_vcpu_has_events`` (a pending interrupt or NMI), with ``cond_resched`` between
    tries.

    Simplified: straight-line work (each try costs the fault path plus one AUG); whether an
    AUG is busy is drawn per try (``aug_busy_p``; < 1, so the loop ends); cond_resched never
    schedules; the fault path does not wait for a SEPT zap in progress."""
    vm = vcpu.tdx_vm
    busy_p = vm.sept.aug_busy_p
    rng: Any = vm.fault_rng
    stat = vcpu.stat
    stat["ept.private_faults"] += 1
    c_try = vcpu.costs.kvm_private_fault_ns + vcpu.costs.tdh_mem_page_aug_ns
    k_ok = seamcall_keys(arch.TDH_MEM_PAGE_AUG, arch.TDX_SUCCESS)[1]
    k_busy = seamcall_keys(arch.TDH_MEM_PAGE_AUG, arch.TDX_OPERAND_BUSY)[1]
    while True:
        cpu.acc += c_try
        if busy_p == 0 or rng.random() >= busy_p:
            stat[k_ok] += 1
            vcpu.guest.next_period()  # mapped: the guest's access completes
            return 1
        stat[k_busy] += 1
        stat["ept.local_retries"] += 1
        if vcpu.sigpending or vcpu.kvm_vcpu_has_events(cpu):
            # re-enter; the guest re-executes the access and faults again
            stat["ept.retry_bailouts"] += 1
            return 1
