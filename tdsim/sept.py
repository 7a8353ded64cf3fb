"""SEPT zaps of a TD's private memory and their contention with TDH.VP.ENTER (tdx.c's
private-SPTE removal path; docs/interrupts.md).

One zap (`SeptZapper.tdx_sept_zap`) models KVM removing ``zap_pages`` private 4K pages, e.g.
on a private->shared conversion, with ``kvm->mmu_lock`` held for write.  Each page is one
``tdx_sept_remove_leaf_spte`` (arch/x86/kvm/vmx/tdx.c, kvm-x86 09c6f74e; called per leaf SPTE,
so a zap of N pages is N rounds of everything below):

1. TDH.MEM.RANGE.BLOCK through ``tdh_do_no_vcpus``;
2. ``tdx_track``: TDH.MEM.TRACK through ``tdh_do_no_vcpus``, then, unconditionally,
   ``kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE)``: every vCPU in guest mode is
   kicked and the caller waits until each has passed its IRQ window after the TD exit, so no
   vCPU still runs in the old TD epoch;
3. TDH.MEM.PAGE.REMOVE through ``tdh_do_no_vcpus``;
4. TDH.PHYMEM.PAGE.WBINVD (not wrapped: it contends with nothing).

``tdh_do_no_vcpus`` issues the SEAMCALL; on TDX_OPERAND_BUSY (any operand id) it sets
``wait_for_sept_zap``, kicks every vCPU out and waits (the same request), retries once and
clears the flag.  While the flag is set every vCPU of the TD spins through
``vcpu_enter_guest`` without a SEAMCALL (abort path D, ``late_abort.wait_for_sept_zap``, time
in ``sept.wait_ns``); after each spin the IRQs-off exit handler acts on the previous exit's
fields, as the kernel does (`VcpuTdx.vt_handle_exit_irqoff`: ``spurious_external_interrupt``
when that exit was a host interrupt's).  The kernel says the retry "is guaranteed to
succeed, absent KVM and/or TDX-Module bugs"; a retry that fails anyway is the caller's
``TDX_BUG_ON`` (`Kvm.kvm_bug_on`): the VM is bugged (``kvm_bug.<function>``) and the zap of
that page ends with -EIO (TRACK's caller still kicks).

Why a SEAMCALL is busy (`SeptZapper.operand_busy`; the TDX module's locks as Yan Zhao's patch
"KVM: TDX: Kick off vCPUs when SEAMCALL is busy during TD page removal" tabulates them):

* TDH.MEM.TRACK takes the TD epoch lock exclusively; TDH.VP.ENTER takes it shared for a short
  critical section early in the SEAMCALL (the module's ``adjust_tlb_tracking_state``).  The
  model has both sides: TRACK is busy when its exclusive hold would overlap the shared hold of
  an entry of this TD that is already committed (``tdh_vp_enter_epoch_ns`` from the entry's
  SEAMCALL instant ``t_seamcall``, at most up to VM entry ``t_enter``).  The other side is the
  epoch-lock window ``vm.epoch_lock_t0/t1`` (`tdsim.tdx_module`): an entry planned after the
  TRACK was published whose SEAMCALL falls inside TRACK's hold gets OPERAND_BUSY (0xA9).  The
  window is published when the BLOCK that precedes the TRACK starts (so entries planned during
  the BLOCK see it) and withdrawn if the TRACK turns out busy (it took no lock).  TRACK has no
  other busy source in the model, hence no probability of its own.
* TDH.MEM.RANGE.BLOCK and TDH.MEM.PAGE.REMOVE contend for the SEPT tree / entry locks with
  TDH.VP.ENTER's zero-step mitigation and with guest TDCALLs (TDG.MEM.PAGE.ACCEPT, ATTR.RD/WR),
  none of which the model has: the first try is busy with probability ``block_busy_p`` /
  ``remove_busy_p`` (operand 0x92).  Their retry succeeds (the kernel's premise).

`SeptZapper.busy` and `SeptZapper.next_zap_ns` are the test hooks: a test replaces them to
force an outcome or to script when zaps happen.

The v6.16 generation (torvalds/linux 3829d81b) has the same dance open-coded with
``tdx_no_vcpus_enter_start/stop`` around the retry of each of the three SEAMCALLs, the same
unconditional kick in ``tdx_track``, and ``KVM_BUG_ON`` where today's code has
``TDX_BUG_ON``; only the function names of the BLOCK and REMOVE bug sites differ
(``tdx_sept_zap_private_spte``, ``tdx_sept_drop_private_spte``).  The model follows today's
names for every generation.

Simplifications: the zapping thread runs on a housekeeping CPU outside the model (its time is
not in any modelled CPU); one zap at a time per TD (mmu_lock is not contended by anything
else in the model); a busy SEAMCALL takes as long as a successful one; the page clearing
after WBINVD (``tdx_quirk_reset_paddr``) is not charged; WBINVD and the retries of BLOCK and
REMOVE never fail; a vCPU that planned its entry before the flag was set but had not yet
reached the late exit-request check is aborted there as a kick (the real one would see the
flag a few hundred ns later in tdx_vcpu_run); an entry already refused with OPERAND_BUSY by a
published TRACK window that is then withdrawn stays refused.  A bugged VM gets no more zaps.

Private-page faults (``private_fault_hz``; the local retry loop of
``tdx_handle_ept_violation``): the guest's EPT violation on a private page not yet mapped, and
KVM's local retry loop while TDH.MEM.PAGE.AUG is busy (``aug_busy_p``).

Oracles: ``zap_stuck`` (a kick-and-wait never acked) and ``td_entry_during_zap``: no TD entry
between the end of tdh_do_no_vcpus's kick-and-wait and the clearing of ``wait_for_sept_zap``
(checked at each TD entry against the VM's ``zap_excl_t0`` / ``zap_excl_t1``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from simpy import AllOf

from . import arch
from .arch import OUTSIDE_GUEST_MODE
from .host import ProcessGenerator
from .rng import exp_ns
from .scope import vm_stream
from .segment import PH_SEG
from .tdx_module import seamcall_keys

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs, SeptConfig
    from .findings import Findings
    from .host import HostCpu, Stat
    from .kvm_tdx import KvmTdx, VcpuTdx
    from .trace import Tracer

NEVER = 1 << 62
EIO = 5

BLOCK = arch.TDH_MEM_RANGE_BLOCK
TRACK = arch.TDH_MEM_TRACK
REMOVE = arch.TDH_MEM_PAGE_REMOVE
WBINVD = arch.TDH_PHYMEM_PAGE_WBINVD
# the SEAMCALLs tdh_do_no_vcpus wraps: the short name of their counters, and the operand the
# module reports busy (KVM never looks at it)
SEPT_CALLS = {BLOCK: "block", TRACK: "track", REMOVE: "remove"}
_BUSY = {BLOCK: arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_SEPT,
         TRACK: arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_TD_EPOCH,
         REMOVE: arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_SEPT}
# why kvm_make_all_cpus_request(KVM_REQ_OUTSIDE_GUEST_MODE) was called (sept.kicks.<cause>)
KICK_BUSY = "busy"    # tdh_do_no_vcpus, after OPERAND_BUSY
KICK_TRACK = "track"  # tdx_track, after every TDH.MEM.TRACK
KICK_CAUSES = (KICK_BUSY, KICK_TRACK)
# where a failed retry is a TDX_BUG_ON (kvm_bug.<site>)
BUG_REMOVE_LEAF = "tdx_sept_remove_leaf_spte"
BUG_TRACK = "tdx_track"

# busy(leaf, retry) -> does this try of `leaf` return TDX_OPERAND_BUSY?
BusyRule = Callable[[int, bool], bool]


class SeptZapper:
    """The zapping side of one TD (kvm_tdx's private-SPTE removal path)."""

    def __init__(self, env: Environment, vm: KvmTdx, cfg: SeptConfig, costs: Costs,
                 rng: random.Random, busy_rngs: dict[int, random.Random], stat: Stat,
                 tracer: Tracer | None) -> None:
        self.env = env
        self.vm = vm
        self.costs = costs
        self.rate_hz = cfg.zap_hz
        self.pages = cfg.zap_pages
        self.busy_p = {BLOCK: cfg.block_busy_p, REMOVE: cfg.remove_busy_p}
        self.rng = rng                # arrivals
        self.busy_rngs = busy_rngs    # per SEAMCALL with a busy probability
        self.stat = stat
        self.tracer = tracer
        self.cost_ns = {BLOCK: costs.tdh_mem_range_block_ns, TRACK: costs.tdh_mem_track_ns,
                        REMOVE: costs.tdh_mem_page_remove_ns,
                        WBINVD: costs.tdh_phymem_page_wbinvd_ns}
        self.epoch_ns = costs.tdh_vp_enter_epoch_ns
        self.waiting_since = -1  # start of the kick-and-wait in progress, -1 = none
        # test hooks (see the module docstring)
        self.busy: BusyRule = self.operand_busy
        self.next_zap_ns: Callable[[], int] = self.exp_gap_ns

    def exp_gap_ns(self) -> int:
        """The time to the next zap: exponential gaps at ``zap_hz``."""
        return exp_ns(self.rng, 1e9 / self.rate_hz)

    def run(self) -> ProcessGenerator:
        env = self.env
        while True:
            yield env.timeout(self.next_zap_ns())
            if self.vm.bugged:
                return  # (a bugged VM is torn down by its VMM; no more conversions)
            yield from self.tdx_sept_zap()

    # --- the zap ----------------------------------------------------------------------------
    def tdx_sept_zap(self) -> ProcessGenerator:
        """One zap of ``zap_pages`` private pages under mmu_lock (write): the TDP MMU calls
        tdx_sept_set_private_spte -> tdx_sept_remove_leaf_spte once per present leaf SPTE.
        (tdsim's name for the loop; the kernel's is the TDP MMU's zap of a GFN range.)"""
        env = self.env
        t0 = env.now
        self.stat["sept.zaps"] += 1
        for _ in range(self.pages):
            r = yield from self.tdx_sept_remove_leaf_spte()
            if r < 0:
                break  # the VM is bugged
        self.stat["sept.zap_ns"] += env.now - t0

    def tdx_sept_remove_leaf_spte(self) -> ProcessGenerator:
        """tdx_sept_remove_leaf_spte (today's tdx.c): BLOCK, tdx_track, REMOVE (the two
        through tdh_do_no_vcpus), then TDH.PHYMEM.PAGE.WBINVD.  Returns 0, or -EIO after a
        TDX_BUG_ON.  The HKID and page-level KVM_BUG_ONs cannot fire in the model."""
        err = yield from self.tdh_do_no_vcpus(BLOCK)
        if self.tdx_bug_on(err, BUG_REMOVE_LEAF):
            return -EIO
        yield from self.tdx_track()
        err = yield from self.tdh_do_no_vcpus(REMOVE)
        if self.tdx_bug_on(err, BUG_REMOVE_LEAF):
            return -EIO
        yield from self.seamcall(WBINVD, False)  # (never fails in the model)
        return 0

    def tdx_track(self) -> ProcessGenerator:
        """tdx_track: TDH.MEM.TRACK through tdh_do_no_vcpus (a failure is a TDX_BUG_ON but
        does not return), then kick every vCPU out of the old TD epoch, unconditionally.
        (The TD is always runnable in the model.)"""
        err = yield from self.tdh_do_no_vcpus(TRACK)
        self.tdx_bug_on(err, BUG_TRACK)
        yield from self.kvm_make_all_cpus_request(KICK_TRACK)

    def tdh_do_no_vcpus(self, leaf: int) -> ProcessGenerator:
        """tdh_do_no_vcpus (today's macro; v6.16's open-coded tdx_no_vcpus_enter_start/stop
        does the same): the SEAMCALL; after OPERAND_BUSY block entries (wait_for_sept_zap),
        kick every vCPU out and wait, retry once, unblock.  Returns the last status."""
        env = self.env
        vm = self.vm
        err = yield from self.seamcall(leaf, False)
        if (err & arch.TDX_SEAMCALL_STATUS_MASK) != arch.TDX_OPERAND_BUSY:
            return err
        name = SEPT_CALLS[leaf]
        self.stat[f"sept.busy.{name}"] += 1
        t0 = env.now
        vm.wait_for_sept_zap = True
        self.trace_flag(True, leaf)
        yield from self.kvm_make_all_cpus_request(KICK_BUSY)
        vm.zap_excl_t0 = env.now
        vm.zap_excl_t1 = NEVER
        err = yield from self.seamcall(leaf, True)
        vm.zap_excl_t1 = env.now
        vm.wait_for_sept_zap = False
        self.trace_flag(False, leaf)
        self.stat["sept.no_vcpus_ns"] += env.now - t0
        self.stat[f"sept.no_vcpus_ns.{name}"] += env.now - t0
        return err

    def seamcall(self, leaf: int, retry: bool) -> ProcessGenerator:
        """One SEPT SEAMCALL of the zapping thread: its outcome is decided when it starts
        (`busy`), it takes its cost, it is counted (and traced) when it returns."""
        env = self.env
        vm = self.vm
        now = env.now
        busy = leaf in SEPT_CALLS and self.busy(leaf, retry)
        status = _BUSY[leaf] if busy else arch.TDX_SUCCESS
        if leaf == BLOCK and not busy:
            # the TRACK that follows will hold the TD epoch lock exclusively; published now so
            # that entries planned meanwhile see it at their SEAMCALL (tdsim.tdx_module)
            vm.epoch_lock_t0 = t = now + self.cost_ns[BLOCK]
            vm.epoch_lock_t1 = t + self.cost_ns[TRACK]
        elif leaf == TRACK:
            if busy:
                vm.epoch_lock_t1 = min(vm.epoch_lock_t1, now)  # it took no lock
            else:
                vm.epoch_lock_t0 = now
                vm.epoch_lock_t1 = now + self.cost_ns[TRACK]
        yield env.timeout(self.cost_ns[leaf])
        self.stat[seamcall_keys(leaf, status)[1]] += 1  # (seamcall.<LEAF>: the sum)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(env.now, "seamcall", -1, None, leaf=arch.SEAMCALL_NAMES[leaf],
                        status=arch.tdx_status_name(status))
        return status

    # --- why a SEAMCALL is busy ---------------------------------------------------------
    def operand_busy(self, leaf: int, retry: bool) -> bool:
        """Does this try of `leaf` return TDX_OPERAND_BUSY (the default `busy` rule; see the
        module docstring)?  TRACK: from the entries in flight; BLOCK / REMOVE: the first try
        with its probability, the retry never."""
        if leaf == TRACK:
            return self.epoch_held_shared() is not None
        p = self.busy_p[leaf]
        return not retry and p > 0 and self.busy_rngs[leaf].random() < p

    def epoch_held_shared(self) -> VcpuTdx | None:
        """A vCPU of this TD whose committed TDH.VP.ENTER holds the TD epoch lock shared at
        some point of the TDH.MEM.TRACK starting now (``tdh_vp_enter_epoch_ns`` from its
        SEAMCALL instant, at most up to VM entry), or None.

        Read from the vCPU's entry segment (`tdsim.segment`): the segment in progress
        (``PH_SEG``, or already cut by a host interrupt, whose TD exit is still to come)
        issued its SEAMCALL at ``t_seamcall`` and it was not refused before the module took
        the lock (``seg_status`` 0: entered, or an injected exit status; a zero-step
        refusal takes and reverts it).  Not in it: a late-aborted entry, an abort-D spin,
        an entry refused busy, associated elsewhere, TSC_ROLLBACK or INCONSISTENT_MSR."""
        now = self.env.now
        t_end = now + self.cost_ns[TRACK]
        vcpus: list[VcpuTdx] = self.vm.vcpus
        for vcpu in vcpus:
            if vcpu.phase != PH_SEG and vcpu.seg_cut is None:
                continue
            if vcpu.seg_status != 0 and vcpu.seg_fault != "zero_step":
                continue
            t0 = vcpu.t_seamcall
            if max(t0, now) < min(t0 + self.epoch_ns, vcpu.t_enter, t_end):  # they overlap
                return vcpu
        return None

    # --- KVM_BUG_ON ---------------------------------------------------------------------------
    def tdx_bug_on(self, err: int, site: str) -> bool:
        """TDX_BUG_ON (today's tdx.c; v6.16: KVM_BUG_ON + pr_tdx_error): a SEAMCALL that failed
        after its retry is a KVM_BUG_ON at `site` (`Kvm.kvm_bug_on`: ``kvm_bug.<site>`` for
        every hit, the warning and kvm_vm_bugged for the first).  No vCPU of the VM issues
        it: the zapping thread is outside.  Returns whether it failed."""
        if not err:
            return False
        self.vm.kvm_bug_on(None, site)
        return True

    # --- kick-and-wait --------------------------------------------------------------------
    def kvm_make_all_cpus_request(self, cause: str) -> ProcessGenerator:
        """kvm_make_all_cpus_request(kvm, KVM_REQ_OUTSIDE_GUEST_MODE): NO_ACTION | WAIT |
        NO_WAKEUP.  Every vCPU not OUTSIDE_GUEST_MODE is kicked and waited for: the wait ends
        when it passes its IRQ window.  Counted by `cause` (busy retry or tdx_track)."""
        env = self.env
        tracer = self.tracer
        events = []
        for vcpu in self.vm.vcpus:
            if vcpu.mode == OUTSIDE_GUEST_MODE:
                continue  # no IPI, nothing to wait for
            if vcpu.outside_ack is None:
                vcpu.outside_ack = env.event()
            ack = vcpu.outside_ack
            events.append(ack)
            if tracer is not None:
                ack.callbacks.append(self._ack_tracer(tracer, vcpu.name, cause))
            vcpu.kvm_request_outside_guest_mode()
        n = len(events)
        self.stat["sept.kicks"] += n
        self.stat[f"sept.kicks.{cause}"] += n
        if tracer is not None:
            tracer.emit(env.now, "sept_kick", -1, None, cause=cause, vcpus=n)
        if events:
            t0 = self.waiting_since = env.now
            yield AllOf(env, events)
            self.waiting_since = -1
            self.stat["sept.kick_wait_ns"] += env.now - t0
            self.stat[f"sept.kick_wait_ns.{cause}"] += env.now - t0

    def _ack_tracer(self, tracer: Tracer, name: str, cause: str) -> Callable[[Any], None]:
        return lambda _ev: tracer.emit(self.env.now, "sept_ack", -1, name, cause=cause)

    def trace_flag(self, value: bool, leaf: int) -> None:
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "sept_flag", -1, None, value=value,
                        leaf=arch.SEAMCALL_NAMES[leaf])


STUCK_WAIT_NS = 100_000


def new_zapper(env: Environment, vm: KvmTdx, costs: Costs, seed: int, stat: Stat,
               tracer: Tracer | None) -> SeptZapper:
    """The zapper of TD `vm` with its named random streams (arrivals, and one per SEAMCALL
    that may be busy)."""
    return SeptZapper(env, vm, vm.sept, costs, vm_stream(seed, vm.name, "sept"),
                      {leaf: vm_stream(seed, vm.name, f"sept.busy.{name}")
                       for leaf, name in SEPT_CALLS.items()}, stat, tracer)


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
