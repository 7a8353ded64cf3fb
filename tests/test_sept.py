"""SEPT zaps: tdx_sept_remove_leaf_spte per page (BLOCK, tdx_track, REMOVE, WBINVD), the busy
retry of tdh_do_no_vcpus, TDH.MEM.TRACK contention with TDH.VP.ENTER, kick-and-wait,
wait_for_sept_zap, the TDX_BUG_ON of a failed retry, and the private-fault retry loop."""

from hypothesis import given
from hypothesis import strategies as st

from tdsim import arch
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation, run
from tdsim.trace import Tracer

BLOCK, TRACK, REMOVE = arch.TDH_MEM_RANGE_BLOCK, arch.TDH_MEM_TRACK, arch.TDH_MEM_PAGE_REMOVE
NEVER = 1 << 62


def zap_td(duration_us=3000, vcpus=4, busy_p=0.0, zap_hz=20000, pages=1, seed=1,
           fault_hz=0, aug_busy_p=0.0, interrupts=None, block_busy_p=0.0, epoch_ns=None,
           costs=None):
    data = {
        "sim": {"duration_us": duration_us, "seed": seed},
        "host": {"cpus": vcpus + 1, "tick_hz": 0},
        "vm": [{"vcpus": vcpus, "pin": list(range(vcpus)),
                "workload": {"compute_us": 10, "mix": {"cpuid": 1.0}},
                "interrupts": interrupts or {},
                "sept": {"zap_hz": zap_hz, "zap_pages": pages, "remove_busy_p": busy_p,
                         "block_busy_p": block_busy_p, "private_fault_hz": fault_hz,
                         "aug_busy_p": aug_busy_p}}],
    }
    data["costs"] = dict(costs or {})
    if epoch_ns is not None:
        data["costs"]["tdh_vp_enter_epoch_ns"] = epoch_ns
    return scenario_from_dict(data, name="<sept>")


def scripted_zaps(scenario, times_ns, busy=None, tracer=None, variants=()):
    """A Simulation whose zapper zaps at `times_ns` (gaps from 0) only, with `busy` (leaf,
    retry, default rule) -> bool deciding OPERAND_BUSY."""
    sim = Simulation(scenario, tracer=tracer, variants=list(variants))
    zapper = sim.model.zappers[0]
    gaps = [b - a for a, b in zip([0, *times_ns], times_ns, strict=False)]
    zapper.next_zap_ns = iter([*gaps, NEVER]).__next__
    if busy is not None:
        default = zapper.busy
        zapper.busy = lambda leaf, retry: busy(leaf, retry, default)
    return sim


def test_each_page_blocks_tracks_removes_and_wbinvds():
    """tdx_sept_remove_leaf_spte runs per page: one BLOCK, TRACK, REMOVE and WBINVD each,
    and every TRACK is followed by its unconditional kick of the vCPUs in the guest."""
    m = run(zap_td(pages=3, epoch_ns=0)).metrics
    zaps = m["sept.zaps"]
    assert zaps >= 20
    pages = m["seamcall.TDH_PHYMEM_PAGE_WBINVD"]
    # (the zap in progress at the end may not have finished all its pages, nor its page)
    assert 3 * zaps - 3 < pages <= 3 * zaps
    assert pages + 1 >= m["seamcall.TDH_MEM_RANGE_BLOCK"] >= m["seamcall.TDH_MEM_TRACK"] \
        >= m["seamcall.TDH_MEM_PAGE_REMOVE"] >= pages
    assert m["sept.kicks.track"] > 3 * pages  # nearly all 4 vCPUs are in the guest each time
    assert "sept.kicks.busy" not in m  # nothing busy: no retry window
    assert m.get("late_abort.wait_for_sept_zap", 0) == 0


def test_busy_block_kicks_and_spins():
    """A busy TDH.MEM.RANGE.BLOCK goes through tdh_do_no_vcpus: wait_for_sept_zap up,
    kick-and-wait, retry; vCPUs spin on the flag (abort D); counted as a BLOCK window."""
    r = run(zap_td(block_busy_p=1.0, epoch_ns=0))
    m = r.metrics
    busy = m["sept.busy.block"]
    assert busy == m["seamcall.TDH_MEM_RANGE_BLOCK.status.TDX_OPERAND_BUSY"] \
        == m["seamcall.TDH_MEM_RANGE_BLOCK.status.TDX_SUCCESS"] >= 20
    assert m["sept.kicks.busy"] > busy  # several of the 4 vCPUs kicked per window
    assert m["sept.no_vcpus_ns.block"] == m["sept.no_vcpus_ns"] > 0
    assert m["late_abort.wait_for_sept_zap"] > 0
    assert not any(k.startswith(("sept.busy.track", "sept.busy.remove", "kvm_bug")) for k in m)
    assert r.violations == []


def test_busy_track_follows_the_entries_in_flight():
    """TDH.MEM.TRACK is busy only when a TD entry holds the epoch lock shared: never with a
    zero-length hold, sometimes with a long one, and then it kicks, spins and retries."""
    assert "sept.busy.track" not in run(zap_td(vcpus=8, epoch_ns=0)).metrics
    r = run(zap_td(vcpus=8, epoch_ns=900))
    m = r.metrics
    busy = m["sept.busy.track"]
    assert busy == m["seamcall.TDH_MEM_TRACK.status.TDX_OPERAND_BUSY"] > 5
    # one successful TRACK per zap, but for a last zap the end of the run cuts short
    assert m["sept.zaps"] - 1 <= m["seamcall.TDH_MEM_TRACK.status.TDX_SUCCESS"] \
        <= m["sept.zaps"]
    assert m["sept.kicks.busy"] > busy
    assert m["sept.no_vcpus_ns.track"] == m["sept.no_vcpus_ns"] > 0
    assert m["late_abort.wait_for_sept_zap"] > 0
    assert r.violations == []


def test_busy_remove_makes_every_vcpu_spin():
    """A PAGE.REMOVE that returns OPERAND_BUSY sets wait_for_sept_zap: vCPUs spin (path D)."""
    r = run(zap_td(busy_p=1.0))
    m = r.metrics
    assert m["seamcall.TDH_MEM_PAGE_REMOVE.status.TDX_OPERAND_BUSY"] == m["sept.busy.remove"]
    assert m["late_abort.wait_for_sept_zap"] > m["sept.busy.remove"]
    assert m["sept.wait_ns"] > 0
    # the one finding: the IRQs-off exit handler acting on the exit before each spin
    assert {v["invariant"] for v in r.violations} == {"spurious_external_interrupt"}
    assert all("stale exit fields" in v["detail"] for v in r.violations)


def test_kick_and_wait_counts_add_up_by_cause():
    """Kicks, kick-and-wait time and time with the flag up are the sums of their parts."""
    m = run(zap_td(block_busy_p=0.3, busy_p=0.3, vcpus=8, epoch_ns=300)).metrics
    assert all(m[f"sept.busy.{c}"] > 0 for c in ("block", "track", "remove"))
    assert m["sept.kicks"] == m["sept.kicks.busy"] + m["sept.kicks.track"]
    assert m["sept.kick_wait_ns"] == m["sept.kick_wait_ns.busy"] + m["sept.kick_wait_ns.track"]
    assert m["sept.no_vcpus_ns"] == sum(m[f"sept.no_vcpus_ns.{c}"]
                                        for c in ("block", "track", "remove"))


def test_busy_block_timeline():
    """One zap of one page, BLOCK busy on its first try, two vCPUs pinned in a long guest
    compute period: every step at the instant the costs give.

    Costs (defaults): BLOCK 800, TRACK 500, REMOVE 1000, WBINVD 1000, ipi 1500, td_exit 600,
    host_irq 1000, exit_handling 250, vcpu_enter_guest 250, and the default host's restores
    after each TDH.VP.ENTER (tdx_vcpu_run): WRPKRU 10 + IA32_XSS WRMSR 35 = 45 (no XSETBV:
    the host XCR0 is the TD's).  Zap at Z = 20 000:
      BLOCK      Z .. +800 busy -> 20 800: flag up, kick both (IN_GUEST_MODE, in the guest)
      IPI        +1 500 -> 22 300: host interrupt, the TD exits (EXTERNAL_INTERRUPT) taking
                 td_exit 600 -> 22 900: IRQ window, both ack; KVM then plans the next entry
                 with the flag up: a spin whose late check is restores + host_irq +
                 exit_handling + vcpu_enter_guest = 1 545 later, at 24 445
      retry      22 900 .. 23 700 BLOCK succeeds; flag down at 23 700
      TRACK      23 700 .. 24 200 succeeds (no entry holds the epoch: both are spinning)
      kick       24 200 (tdx_track, unconditional): both are before their late check, which
                 fires at 24 445 (late_abort.kick) and acks
      REMOVE     24 445 .. 25 445, WBINVD 25 445 .. 26 445
    """
    scenario = scenario_from_dict({
        "sim": {"duration_us": 40, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 2, "pin": [0, 1],
                "workload": {"compute_us": 1000, "compute_dist": "fixed",
                             "mix": {"cpuid": 1.0}},
                "sept": {"zap_hz": 1.0}}],
    }, name="<timeline>")
    tracer = Tracer(kinds=["seamcall", "sept_flag", "sept_kick", "sept_ack", "kvm_exit",
                           "late_abort"])
    sim = scripted_zaps(scenario, [20_000], tracer=tracer,
                        busy=lambda leaf, retry, default:
                        (leaf == BLOCK and not retry) or default(leaf, retry))
    r = sim.run()
    log = []
    for t, kind, cpu, vcpu, f in tracer.sorted_events():
        if kind == "seamcall" and cpu == -1:
            log.append((t, f["leaf"], f["status"]))
        elif kind == "sept_flag":
            log.append((t, "wait_for_sept_zap", f["value"]))
        elif kind == "sept_kick":
            log.append((t, "kick", f["cause"], f["vcpus"]))
        elif kind == "sept_ack":
            log.append((t, "ack", f["cause"], vcpu))
        elif kind == "kvm_exit":
            log.append((t, "exit", vcpu, f["reason"]))
        elif kind == "late_abort":
            log.append((t, "late_abort", vcpu, f["abort"]))
    v0, v1 = "td0.vcpu0", "td0.vcpu1"
    assert log == [
        (20800, "TDH_MEM_RANGE_BLOCK", "TDX_OPERAND_BUSY"),
        (20800, "wait_for_sept_zap", True),
        (20800, "kick", "busy", 2),
        (22900, "exit", v0, "EXTERNAL_INTERRUPT"),
        (22900, "exit", v1, "EXTERNAL_INTERRUPT"),
        (22900, "ack", "busy", v0),
        (22900, "ack", "busy", v1),
        (23700, "TDH_MEM_RANGE_BLOCK", "TDX_SUCCESS"),
        (23700, "wait_for_sept_zap", False),
        (24200, "TDH_MEM_TRACK", "TDX_SUCCESS"),
        (24200, "kick", "track", 2),
        (24445, "late_abort", v0, "kick"),
        (24445, "late_abort", v1, "kick"),
        (24445, "ack", "track", v0),
        (24445, "ack", "track", v1),
        (25445, "TDH_MEM_PAGE_REMOVE", "TDX_SUCCESS"),
        (26445, "TDH_PHYMEM_PAGE_WBINVD", "TDX_SUCCESS"),
    ]
    m = r.metrics
    assert m["sept.no_vcpus_ns.block"] == 23700 - 20800
    assert m["sept.kick_wait_ns.busy"] == 22900 - 20800
    assert m["sept.kick_wait_ns.track"] == 24445 - 24200
    assert m["sept.zap_ns"] == 26445 - 20000
    assert r.violations == []


def test_failed_remove_retry_bugs_the_vm():
    """A PAGE.REMOVE retry that is busy again is tdx_sept_remove_leaf_spte's TDX_BUG_ON: the
    VM is bugged (every vCPU leaves KVM_RUN with -EIO), the zap stops, no zap follows."""
    sim = scripted_zaps(zap_td(duration_us=200, pages=2), [20_000, 60_000],
                        busy=lambda leaf, retry, default: leaf == REMOVE)
    m = sim.run().metrics
    assert m["kvm_bug.tdx_sept_remove_leaf_spte"] == m["kvm_bug"] == 1
    assert m["kernel_warn.tdx_sept_remove_leaf_spte"] == m["kernel_warn"] == 1
    assert m["sept.zaps"] == 1  # the second is not issued for a bugged VM
    assert m["seamcall.TDH_MEM_PAGE_REMOVE.status.TDX_OPERAND_BUSY"] == 2  # try and retry
    assert "seamcall.TDH_PHYMEM_PAGE_WBINVD" not in m  # -EIO before it, and no second page
    assert m["vcpu_stopped"] == 4
    assert m["late_abort.vm_dead"] == 4


def test_failed_track_retry_bugs_the_vm_but_still_kicks():
    """A TRACK retry that is busy again is tdx_track's TDX_BUG_ON, which does not return: the
    unconditional kick and the REMOVE still follow."""
    sim = scripted_zaps(zap_td(duration_us=200), [20_000],
                        busy=lambda leaf, retry, default: leaf == TRACK)
    m = sim.run().metrics
    assert m["kvm_bug.tdx_track"] == m["kvm_bug"] == 1
    assert m["kernel_warn.tdx_track"] == m["kernel_warn"] == 1
    assert m["seamcall.TDH_MEM_TRACK.status.TDX_OPERAND_BUSY"] == 2
    assert m["sept.kicks.track"] > 0
    assert m["seamcall.TDH_MEM_PAGE_REMOVE.status.TDX_SUCCESS"] == 1
    assert m["seamcall.TDH_PHYMEM_PAGE_WBINVD"] == 1


def test_entry_during_track_gets_operand_busy_and_is_retried():
    """A TDH.VP.ENTER issued while TDH.MEM.TRACK holds the epoch fails with OPERAND_BUSY
    and the run loop retries without exiting to userspace."""
    m = run(zap_td(duration_us=20000, vcpus=8, zap_hz=50000)).metrics
    assert m["seamcall.TDH_VP_ENTER.status.TDX_OPERAND_BUSY"] == m["vp_enter_busy"] > 0
    assert m["userspace_exits"] == 0


def test_entry_oracle_fires_if_vcpus_ignore_wait_for_sept_zap():
    """With the wait_for_sept_zap check removed, vCPUs enter during the retry: recorded.
    (A REMOVE long enough for a kicked vCPU to be back in the TD before it returns; TRACK
    never busy, see the next test.)"""
    r = run(zap_td(busy_p=1.0, vcpus=8, pages=4, epoch_ns=0,
                   costs={"tdh_mem_page_remove_ns": 5000}),
            variants=["ignore_wait_for_sept_zap"])
    assert r.metrics["violations.td_entry_during_zap"] > 0
    assert "kvm_bug" not in r.metrics


def test_ignoring_the_flag_makes_a_track_retry_fail():
    """With the wait_for_sept_zap check removed, a vCPU re-enters during a busy TRACK's
    retry and holds the epoch lock: the retry fails too, tdx_track's TDX_BUG_ON."""
    r = run(zap_td(vcpus=8, epoch_ns=900), variants=["ignore_wait_for_sept_zap"])
    m = r.metrics
    assert m["kvm_bug.tdx_track"] == m["kvm_bug"] == 1
    assert m["vcpu_stopped"] == 8


@given(vcpus=st.integers(1, 4), busy_p=st.sampled_from([0.0, 0.5, 1.0]),
       block_busy_p=st.sampled_from([0.0, 0.5, 1.0]), epoch_ns=st.sampled_from([0, 100, 900]),
       pages=st.integers(1, 3), fault_hz=st.sampled_from([0, 100000]),
       seed=st.integers(0, 2**16))
def test_no_entry_during_zap_on_random_storms(vcpus, busy_p, block_busy_p, epoch_ns, pages,
                                              fault_hz, seed):
    """Random zap storms (busy BLOCK, TRACK and REMOVE, private faults) never let a vCPU
    enter while a zap needs all vCPUs out, and every retry succeeds (no TDX_BUG_ON)."""
    r = run(zap_td(duration_us=400, vcpus=vcpus, busy_p=busy_p, block_busy_p=block_busy_p,
                   epoch_ns=epoch_ns, zap_hz=50000, pages=pages, seed=seed,
                   fault_hz=fault_hz, aug_busy_p=0.5))
    assert [v for v in r.violations if "stale exit fields" not in v["detail"]] == []
    assert "kvm_bug" not in r.metrics


def test_private_fault_retries_locally_without_reentering():
    """AUG busy -> RET_PF_RETRY is retried inside KVM: one EPT-violation exit per fault,
    however many AUG tries it took."""
    r = run(zap_td(zap_hz=0, fault_hz=50000, aug_busy_p=0.6))
    m = r.metrics
    assert m["ept.private_faults"] >= 100
    assert m["exits.reason.EPT_VIOLATION"] == m["ept.private_faults"]
    assert m["seamcall.TDH_MEM_PAGE_AUG.status.TDX_SUCCESS"] == m["ept.private_faults"]
    assert m["seamcall.TDH_MEM_PAGE_AUG.status.TDX_OPERAND_BUSY"] == m["ept.local_retries"]
    assert m["ept.local_retries"] > m["ept.private_faults"]  # mean 1.5 busy tries per fault
    assert r.violations == []


def test_private_fault_retry_bails_out_on_pending_interrupt():
    """With interrupts pending the loop gives up and re-enters: the guest faults again."""
    m = run(zap_td(zap_hz=0, vcpus=1, fault_hz=50000, aug_busy_p=0.9,
                   interrupts={"device_irq_hz": 200000, "device_irq_vcpus": [0]})).metrics
    assert m["ept.retry_bailouts"] > 0
    assert m["exits.reason.EPT_VIOLATION"] == \
        m["seamcall.TDH_MEM_PAGE_AUG.status.TDX_SUCCESS"] + m["ept.retry_bailouts"]


def test_stuck_kick_and_wait_is_reported():
    """If vCPUs never acknowledged the kick (no IRQ window after the exit), the zap hangs
    and the oracle says so."""
    r = run(zap_td(duration_us=1000), variants=["no_outside_ack"])
    assert r.metrics["violations.zap_stuck"] == 1
