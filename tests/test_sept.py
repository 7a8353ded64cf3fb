"""SEPT zaps: TDH.MEM.TRACK contention with TDH.VP.ENTER, kick-and-wait, wait_for_sept_zap."""

from hypothesis import given
from hypothesis import strategies as st

from tdsim.scenario import scenario_from_dict
from tdsim.sim import run


def zap_td(duration_us=3000, vcpus=4, busy_p=0.0, zap_hz=20000, pages=1, seed=1,
           fault_hz=0, aug_busy_p=0.0, interrupts=None):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": seed},
        "host": {"cpus": vcpus + 1, "tick_hz": 0},
        "vm": [{"vcpus": vcpus, "pin": list(range(vcpus)),
                "workload": {"compute_us": 10, "mix": {"cpuid": 1.0}},
                "interrupts": interrupts or {},
                "sept": {"zap_hz": zap_hz, "zap_pages": pages, "remove_busy_p": busy_p,
                         "private_fault_hz": fault_hz, "aug_busy_p": aug_busy_p}}],
    }, name="<sept>")


def test_each_zap_blocks_tracks_and_removes():
    """One RANGE.BLOCK and one TRACK per zap, one PAGE.REMOVE per page."""
    m = run(zap_td(pages=3)).metrics
    zaps = m["sept.zaps"]
    assert zaps >= 20
    assert m["seamcall.TDH_MEM_RANGE_BLOCK"] == m["seamcall.TDH_MEM_TRACK"] == zaps
    # (the zap in progress at the end may not have removed all its pages yet)
    assert 3 * zaps - 3 < m["seamcall.TDH_MEM_PAGE_REMOVE"] <= 3 * zaps


def test_track_kicks_every_vcpu_in_the_guest():
    """Busy vCPUs are in the guest at almost every zap: each zap kicks nearly all of them."""
    m = run(zap_td(vcpus=4)).metrics
    assert m["sept.kicks"] > 3 * m["sept.zaps"]
    assert m["sept.kick_wait_ns"] > 0
    assert m.get("late_abort.wait_for_sept_zap", 0) == 0  # no BUSY remove: no spin


def test_busy_remove_makes_every_vcpu_spin():
    """A PAGE.REMOVE that returns OPERAND_BUSY sets wait_for_sept_zap: vCPUs spin (path D)."""
    r = run(zap_td(busy_p=1.0))
    m = r.metrics
    assert m["seamcall.TDH_MEM_PAGE_REMOVE.status.TDX_OPERAND_BUSY"] == m["sept.remove_busy"]
    assert m["late_abort.wait_for_sept_zap"] > m["sept.remove_busy"]
    assert m["sept.wait_ns"] > 0
    # the one finding: the IRQs-off exit handler acting on the exit before each spin
    assert {v["invariant"] for v in r.violations} == {"spurious_external_interrupt"}
    assert all("stale exit fields" in v["detail"] for v in r.violations)


def test_entry_during_track_gets_operand_busy_and_is_retried():
    """A TDH.VP.ENTER issued while TDH.MEM.TRACK holds the epoch fails with OPERAND_BUSY
    and the run loop retries without exiting to userspace."""
    m = run(zap_td(duration_us=20000, vcpus=8, zap_hz=50000)).metrics
    assert m["seamcall.TDH_VP_ENTER.status.TDX_OPERAND_BUSY"] == m["vp_enter_busy"] > 0
    assert m["userspace_exits"] == 0


def test_entry_oracle_fires_if_vcpus_ignore_wait_for_sept_zap():
    """With the wait_for_sept_zap check removed, vCPUs enter during the retry: recorded."""
    r = run(zap_td(busy_p=1.0, vcpus=8, pages=4), variants=["ignore_wait_for_sept_zap"])
    assert r.metrics["violations.td_entry_during_zap"] > 0


@given(vcpus=st.integers(1, 4), busy_p=st.sampled_from([0.0, 0.5, 1.0]),
       pages=st.integers(1, 3), fault_hz=st.sampled_from([0, 100000]),
       seed=st.integers(0, 2**16))
def test_no_entry_during_zap_on_random_storms(vcpus, busy_p, pages, fault_hz, seed):
    """Random zap storms (with private faults) never let a vCPU enter while a zap needs all
    vCPUs out."""
    r = run(zap_td(duration_us=400, vcpus=vcpus, busy_p=busy_p, zap_hz=50000, pages=pages,
                   seed=seed, fault_hz=fault_hz, aug_busy_p=0.5))
    assert [v for v in r.violations if "stale exit fields" not in v["detail"]] == []


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
