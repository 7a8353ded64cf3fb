"""The scenario schema: every key a scenario may set, its type, its default and its limits.

This is the only place where defaults live.  The model reads the fully resolved scenario
(`Scenario.data`) and never falls back to a default of its own, so a misspelt key is an error
at load time instead of a silently ignored knob.

Times are given in the unit their name says (``_us`` or ``_ns``) and converted to integer
nanoseconds by the model.  Costs are in nanoseconds; each carries the status of its value
(``source`` = a figure published for the operation, ``estimate`` = derived from a published
figure, ``placeholder`` = a calibration guess) so a study can say what it rests on;
docs/costs.md gives the basis of each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import faults as _faults
from . import guest as _guest
from . import schedule as _schedule
from . import strategies as _strategies
from . import tdvmcall_abi as _tdvmcall_abi

_Type = type  # the builtin, for annotations inside `Key` (whose field `type` shadows it)


@dataclass(frozen=True)
class Key:
    """One scalar or list key: its type, default and an optional check on the value."""

    type: _Type | tuple[_Type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns an error message or None
    choices: tuple[Any, ...] | None = None
    optional: bool = False  # default None means "not set"
    item_type: _Type | tuple[_Type, ...] | None = None  # for list keys
    index_default: str | None = None  # inside an array of tables: default, "{i}" = item index


@dataclass(frozen=True)
class Table:
    """A TOML table with a fixed set of keys."""

    keys: dict[str, Key | Table | Map | ArrayOfTables]
    doc: str = ""


@dataclass(frozen=True)
class Map:
    """A TOML table whose keys are drawn from `allowed` and whose values share one Key spec.

    ``allowed=None``: any key (free-form names, e.g. metric names in ``[expect.metrics]``);
    then `value` may also be a `Table` (one table per name, e.g. ``[expect.strategy.eager]``)."""

    allowed: tuple[str, ...] | None
    value: Key | Table
    default: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class ArrayOfTables:
    """A TOML array of tables (``[[vm]]``): each item follows `item`."""

    item: Table
    min_items: int = 1
    default_items: int = 1  # items created when the scenario has none
    doc: str = ""


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def probability_below_one(v: Any) -> str | None:
    """A per-try failure probability whose retry loop must end."""
    return None if 0 <= v < 1 else "must be >= 0 and < 1"


NUM = (int, float)

# Declared by the model: the kinds of TDVMCALL a statistical workload can issue, the
# built-in strategies, the fault knobs.
TDVMCALL_KINDS = _guest.TDVMCALL_KINDS
BUILTIN_STRATEGIES = tuple(_strategies.BUILTIN)


def _strategy_check(v: str) -> str | None:
    if v in BUILTIN_STRATEGIES or ":" in v:
        return None
    return (
        f"unknown strategy {v!r}: use one of {', '.join(BUILTIN_STRATEGIES)} "
        'or "package.module:Class" / "path/file.py:Class"'
    )


def _u64(v: Any) -> str | None:
    return None if 0 <= v < 1 << 64 else "must be a 64-bit unsigned value"


def _cost(default: int, status: str, plausible: tuple[int, int], doc: str) -> Key:
    """A cost key; its doc starts ``[<status>; plausible <low>-<high> ns]``, which
    `tdsim schema` prints and cost-uncertainty studies read (docs/studies.md)."""
    low, high = plausible
    assert low <= default <= high, (default, plausible)
    return Key(int, default, f"[{status}; plausible {low}-{high} ns] {doc}", non_negative)


# Per-operation costs; docs/costs.md says where each figure comes from.  `source` = a figure
# published for the operation; `estimate` = derived from a published figure; `placeholder` =
# a calibration guess, change it freely.  `plausible` is the range a cost-uncertainty study
# samples: for a placeholder about half to three times the default (the uncertainty of an
# uncalibrated guess), narrower where a published figure or a judgement of the order of
# magnitude bounds it (wrmsr_ns, seamcall_ns, ipi_ns, vmx_*); to revise with every
# calibration.
COSTS = Table(
    {
        "wrmsr_ns": _cost(35, "estimate", (25, 70),
                          "one WRMSR; from the ~300-500 cycles that commit c0711f8c610e's "
                          "message gives for 4 user-return WRMSRs, at ~3 GHz"),
        "rdmsr_ns": _cost(30, "placeholder", (15, 90), "one RDMSR"),
        "xsetbv_ns": _cost(60, "placeholder", (30, 180), "one XSETBV (XCR0 write)"),
        "wrpkru_ns": _cost(10, "placeholder", (5, 30), "one WRPKRU"),
        "seamcall_ns": _cost(300, "placeholder", (100, 600),
                             "bare SEAMCALL/SEAMRET transition pair (a guess of several "
                             "hundred to about a thousand cycles)"),
        "td_entry_ns": _cost(600, "placeholder", (300, 1800),
                             "TDH.VP.ENTER module work up to VM entry (checks, guest state load); "
                             "with td_exit_ns and seamcall_ns a TD round trip of 'thousands of "
                             "cycles' (commit c0711f8c610e's message)"),
        "td_exit_ns": _cost(600, "placeholder", (300, 1800),
                            "TD exit: module saves guest state, sets host fixed values, SEAMRET"),
        "first_entry_flush_ns": _cost(1500, "placeholder", (700, 4500),
                                      "the module's extra entry work when an LP enters another "
                                      "vCPU than the one it last ran (TLB flush, IBPB)"),
        "vcpu_enter_guest_ns": _cost(250, "placeholder", (120, 750),
                                     "KVM bookkeeping in vcpu_enter_guest before TDH.VP.ENTER "
                                     "(request check, IRQs off, mode, late check)"),
        "exit_handling_ns": _cost(250, "placeholder", (120, 750),
                                  "KVM work after TD exit: post-exit fix-ups, irqoff handling, "
                                  "IRQ window, tdx_handle_exit dispatch"),
        "guest_tdvmcall_ns": _cost(400, "placeholder", (200, 1200),
                                   "guest #VE handling and TDCALL set-up before a TDVMCALL "
                                   "(charged as guest time)"),
        "tdvmcall_cpuid_ns": _cost(300, "placeholder", (150, 900),
                                   "KVM handling of TDVMCALL CPUID"),
        "tdvmcall_msr_ns": _cost(200, "placeholder", (100, 600),
                                 "KVM handling of TDVMCALL RDMSR/WRMSR"),
        "tdvmcall_hypercall_ns": _cost(300, "placeholder", (150, 900),
                                       "KVM hypercall (R10 != 0) handling"),
        "tdvmcall_hlt_ns": _cost(200, "placeholder", (100, 600),
                                 "KVM handling of TDVMCALL HLT before blocking"),
        "tdvmcall_userspace_ns": _cost(300, "placeholder", (150, 900),
                                       "KVM work to prepare an exit to userspace (kvm_run fields, "
                                       "completion callback)"),
        "kvm_run_ioctl_ns": _cost(800, "placeholder", (400, 2400),
                                  "KVM_RUN return to userspace and the next KVM_RUN syscall "
                                  "(entry/exit, FPU put/load)"),
        "vmm_io_ns": _cost(3000, "placeholder", (1500, 9000),
                           "userspace VMM service time for KVM_EXIT_IO"),
        "vmm_mmio_ns": _cost(4000, "placeholder", (2000, 12000),
                             "userspace VMM service time for KVM_EXIT_MMIO"),
        "vmm_mapgpa_ns": _cost(20000, "placeholder", (10000, 60000),
                               "userspace VMM service time for "
                               "KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE)"),
        "vcpu_load_ns": _cost(150, "placeholder", (75, 450),
                              "kvm_arch_vcpu_load bookkeeping (PI descriptor update, list add), "
                              "MSR writes excluded"),
        "vcpu_put_ns": _cost(150, "placeholder", (75, 450),
                             "kvm_arch_vcpu_put bookkeeping, MSR writes excluded"),
        "context_switch_ns": _cost(1500, "placeholder", (750, 4500),
                                   "host context switch (schedule(), switch_to)"),
        "ipi_ns": _cost(1500, "placeholder", (1000, 2000),
                        "cross-CPU IPI delivery (a guess of 1-2 us)"),
        "host_irq_ns": _cost(1000, "placeholder", (500, 3000),
                             "host interrupt handler run in handle_exit_irqoff (tick, hrtimer)"),
        "tdh_vp_flush_ns": _cost(2000, "placeholder", (1000, 6000),
                                 "TDH.VP.FLUSH on the old CPU, SEAMCALL included"),
        "tdh_vp_rd_ns": _cost(400, "placeholder", (200, 1200), "TDH.VP.RD, SEAMCALL included"),
        "tdh_vp_wr_ns": _cost(400, "placeholder", (200, 1200), "TDH.VP.WR, SEAMCALL included"),
        "guest_irq_ns": _cost(1000, "placeholder", (500, 3000),
                              "guest interrupt handler for a delivered posted interrupt (guest "
                              "time)"),
        # --- TDVMCALL handling (docs/tdvmcall.md) ---
        "tdvmcall_simple_ns": _cost(150, "placeholder", (75, 450),
                                    "KVM handling of a TDVMCALL answered without emulation: a "
                                    "validation failure, SUBFUNC_UNSUPPORTED, GetTdVmCallInfo "
                                    "leaf 0"),
        "regs_copy_ns": _cost(0, "placeholder", (0, 1),
                              "one 8-byte GPR copy between vp_enter_args and KVM's regs[] (about "
                              "a cycle, below the model's 1 ns resolution: 0 by default; set it "
                              "to price the register layout)"),
        "vmm_tdx_ns": _cost(5000, "placeholder", (2500, 15000),
                            "userspace VMM service time for KVM_EXIT_TDX (GetQuote queued, "
                            "SetupEventNotifyInterrupt, GetTdVmCallInfo)"),
        "vmm_msr_ns": _cost(3000, "placeholder", (1500, 9000),
                            "userspace VMM service time for KVM_EXIT_X86_RDMSR/WRMSR"),
        "vmm_system_event_ns": _cost(2000, "placeholder", (1000, 6000),
                                     "userspace VMM service time for KVM_EXIT_SYSTEM_EVENT (TDX "
                                     "fatal error report)"),
        # --- late entry aborts, VMX co-tenants (docs/late-aborts.md) -------------------------
        "vmx_entry_ns": _cost(500, "placeholder", (250, 750),
                              "VMX VM entry (VMRESUME), hardware (a guess, as is vmx_exit_ns)"),
        "vmx_exit_ns": _cost(300, "placeholder", (150, 450), "VMX VM exit, hardware"),
        "vmx_exit_handling_ns": _cost(500, "placeholder", (250, 1500),
                                      "KVM VMX exit handling for an in-kernel exit (CPUID, MSR, "
                                      "hypercall)"),
        "ept_violation_ns": _cost(1500, "placeholder", (750, 4500),
                                  "tdx_handle_ept_violation for a synthesized zero-step EPT "
                                  "violation (fault path, page already mapped)"),
        "notify_resume_ns": _cost(300, "placeholder", (150, 900),
                                  "resume_user_mode_work run from xfer_to_guest_mode_handle_work"),
        "in_guest_mode_window_ns": _cost(50, "placeholder", (25, 150),
                                         "from vcpu->mode = IN_GUEST_MODE to the late "
                                         "kvm_vcpu_exit_request check (a kick in it aborts the "
                                         "entry)"),
        # --- interrupts, NMIs, SEPT zaps (docs/interrupts.md) ---
        "icr_write_ns": _cost(150, "placeholder", (75, 450),
                              "KVM emulation of an x2APIC ICR write, per destination "
                              "(kvm_apic_send_ipi -> __apic_accept_irq -> PI post)"),
        "host_nmi_ns": _cost(1500, "placeholder", (750, 4500),
                             "host NMI handler (perf / watchdog) run in tdx_vcpu_enter_exit after "
                             "an EXCEPTION_NMI exit"),
        "guest_nmi_ns": _cost(2000, "placeholder", (1000, 6000), "guest NMI handler (guest time)"),
        "tdh_mem_range_block_ns": _cost(800, "placeholder", (400, 2400),
                                        "TDH.MEM.RANGE.BLOCK, SEAMCALL included"),
        "tdh_mem_track_ns": _cost(500, "placeholder", (250, 1500),
                                  "TDH.MEM.TRACK, SEAMCALL included (holds the TD epoch lock "
                                  "exclusively meanwhile)"),
        "tdh_mem_page_remove_ns": _cost(1000, "placeholder", (500, 3000),
                                        "TDH.MEM.PAGE.REMOVE, SEAMCALL included"),
        "tdh_phymem_page_wbinvd_ns": _cost(1000, "placeholder", (500, 3000),
                                           "TDH.PHYMEM.PAGE.WBINVD of one removed 4K page "
                                           "(write-back and invalidate of its cache lines "
                                           "under the TD's HKID), SEAMCALL included"),
        "tdh_vp_enter_epoch_ns": _cost(100, "placeholder", (25, 900),
                                       "not a cost: how long a TDH.VP.ENTER holds the TD "
                                       "epoch lock shared, from its SEAMCALL (the module's "
                                       "TLB-tracking critical section; at most up to VM "
                                       "entry, seamcall_ns + td_entry_ns later).  A "
                                       "TDH.MEM.TRACK whose exclusive hold overlaps it "
                                       "returns TDX_OPERAND_BUSY (tdsim/sept.py)"),
        "tdh_mem_page_aug_ns": _cost(1000, "placeholder", (500, 3000),
                                     "TDH.MEM.PAGE.AUG, SEAMCALL included"),
        "kvm_private_fault_ns": _cost(500, "placeholder", (250, 1500),
                                      "KVM's TDP MMU fault path for one try on a private GPA "
                                      "(kvm_mmu_page_fault, mmu_lock read, walk), SEAMCALL "
                                      "excluded"),
    },
    doc="Per-operation costs in ns.",
)

WORKLOAD = Table(
    {
        "compute_us": Key(NUM, 20.0, "guest compute time between TDVMCALLs", positive),
        "compute_dist": Key(str, "exp", "distribution of compute time",
                            choices=("fixed", "exp")),
        "timer_hz": Key(NUM, 0.0, "periodic guest LAPIC timer (a host hrtimer), delivered as a "
                        "posted interrupt; 0 = off", non_negative),
        "mix": Map(TDVMCALL_KINDS, Key(NUM, 0.0, "relative weight", non_negative),
                   default={"cpuid": 1.0},
                   doc="relative weights of the TDVMCALLs the guest issues after each compute "
                       "period; kinds not named have weight 0"),

        # scripted guests (tdsim.program)
        "program": Key(list, [], "a scripted guest: steps run in order instead of the "
                       "statistical workload (compute_us, compute_dist and mix are then "
                       "unused); see tdsim.program for the step forms", item_type=dict),
        "program_file": Key(str, None, "TOML file (relative to the scenario) whose `program` "
                            "array is the program of this VM's vCPUs; inlined into `program` "
                            "at load",
                            optional=True),
        "record_calls": Key(int, 1000, "scripted guests: calls recorded per vCPU in the "
                            "result (later calls still run and count)", non_negative),
        # guest-visible user-return MSRs (VMX guests)
        "tsc_aux_read_hz": Key(NUM, 0.0, "VMX guests: rate of RDPID/RDTSCP reads of TSC_AUX "
                               "while the guest runs; each read is compared with the value KVM "
                               "meant the guest to see (its vCPU id); 0 = off", non_negative),
        "timer_mode": Key(str, "periodic", "guest LAPIC timer: periodic (the hrtimer re-arms "
                          "itself) or oneshot (TSC-deadline, as a tickless Linux guest: the "
                          "guest's timer handler re-arms it with a WRMSR(IA32_TSC_DEADLINE) "
                          "TDVMCALL, one more TD exit per tick)",
                          choices=("periodic", "oneshot")),
    },
    doc="What the guest vCPUs do.",
)

# --- interrupt sources and SEPT zaps of one TD (all off by default) -------------------------
IPI_PATTERNS = ("unicast", "multicast", "broadcast", "shootdown")
DEVICE_POSTING = ("kvm", "vtd")

INTERRUPTS = Table(
    {
        "ipi_hz": Key(NUM, 0.0, "guest IPIs sent per vCPU per second of guest run time: the "
                      "guest ends a compute period with an x2APIC ICR write (TDVMCALL WRMSR "
                      "0x830) instead of its mix call; 0 = off", non_negative),
        "ipi_pattern": Key(str, "unicast", "destinations of one guest IPI: unicast (one random "
                           "other vCPU), multicast (ipi_targets random others), broadcast (all "
                           "others), shootdown (like multicast to shootdown_targets others, "
                           "and the sender spins in guest until every receiver has acked)",
                           choices=IPI_PATTERNS),
        "ipi_targets": Key(int, 2, "destinations of a multicast IPI", positive),
        "shootdown_targets": Key(int, 0, "receivers of one TLB shootdown; 0 = all other "
                                 "vCPUs", non_negative),
        "device_irq_hz": Key(NUM, 0.0, "device interrupts per second (MSI via irqfd, posted "
                             "from a host CPU outside the TD's); 0 = off", non_negative),
        "device_irq_vcpus": Key(list, [0], "vCPUs the device interrupts are routed to "
                                "(round robin)", item_type=int),
        "device_posting": Key(str, "kvm", "who posts the device interrupts: kvm (KVM "
                              "injects them through the irqfd: __vmx_deliver_posted_interrupt, "
                              "a blocked vCPU is woken directly) or vtd (an assigned device "
                              "whose MSIs the IOMMU posts into the PI descriptor: "
                              "vmx_can_use_vtd_pi is true, so vmx_vcpu_pi_put suppresses "
                              "notifications (SN) while the vCPU is put, or switches a "
                              "blocked one to the wake-up vector, whose handler wakes it)",
                              choices=DEVICE_POSTING),
        "nmi_hz": Key(NUM, 0.0, "NMIs injected per vCPU per second by the VMM / a watchdog "
                      "(kvm_inject_nmi); 0 = off", non_negative),
        "tlb_flush_hz": Key(NUM, 0.0, "host-side remote TLB flushes of this VM per second "
                            "(kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH), e.g. from MMU "
                            "notifiers): a request bit on every vCPU plus a kick of those in "
                            "guest mode; 0 = off", non_negative),
        "hlt_irqs_off_p": Key(NUM, 0.0, "fraction of the guest's HLTs issued with interrupts "
                              "disabled (TDVMCALL HLT with R12 = 1: tdx_interrupt_allowed is "
                              "false, only an NMI wakes the vCPU; needs nmi_hz > 0)",
                              probability),
    },
    doc="Interrupt sources of the TD besides the guest timer (workload.timer_hz).",
)

SEPT = Table(
    {
        "zap_hz": Key(NUM, 0.0, "private-page zaps per second (e.g. private->shared "
                      "conversions); under mmu_lock each runs, per page, "
                      "tdx_sept_remove_leaf_spte: TDH.MEM.RANGE.BLOCK, TDH.MEM.TRACK + the "
                      "kick-and-wait of every vCPU, TDH.MEM.PAGE.REMOVE (the three through "
                      "tdh_do_no_vcpus), TDH.PHYMEM.PAGE.WBINVD; 0 = off", non_negative),
        "zap_pages": Key(int, 1, "4K pages removed per zap (one BLOCK, TRACK + kick, REMOVE "
                         "and WBINVD each)", positive),
        "block_busy_p": Key(NUM, 0.0, "probability that the first TDH.MEM.RANGE.BLOCK of a "
                            "page returns TDX_OPERAND_BUSY (SEPT lock held by TDH.VP.ENTER's "
                            "zero-step mitigation or a guest TDG.MEM.PAGE.ACCEPT / ATTR call, "
                            "neither modelled); tdh_do_no_vcpus then raises "
                            "wait_for_sept_zap, kicks every vCPU out and retries (the retry "
                            "succeeds).  TDH.MEM.TRACK's busy is not a knob: it follows from "
                            "the TD entries in flight (costs.tdh_vp_enter_epoch_ns)",
                            probability),
        "remove_busy_p": Key(NUM, 0.0, "probability that the first TDH.MEM.PAGE.REMOVE of a "
                             "page returns TDX_OPERAND_BUSY (as for block_busy_p); the retry "
                             "goes through tdh_do_no_vcpus (wait_for_sept_zap)", probability),
        "private_fault_hz": Key(NUM, 0.0, "EPT violations on not-yet-mapped private pages "
                                "per vCPU per second of guest run time; 0 = off",
                                non_negative),
        "aug_busy_p": Key(NUM, 0.0, "probability that one TDH.MEM.PAGE.AUG of the fault path "
                          "returns TDX_OPERAND_BUSY (RET_PF_RETRY: KVM retries locally, "
                          "without re-entering the TD)", probability_below_one),
    },
    doc="SEPT zaps of this TD's private memory (docs/interrupts.md).",
)

VM = Table(
    {
        "name": Key(str, None, "VM name (default td<index>)", optional=True,
                    index_default="td{i}"),
        "flavor": Key(str, "tdx", "guest flavor: a TD, or a plain VMX guest sharing the host",
                      choices=("tdx", "vmx")),
        "vcpus": Key(int, 1, "number of vCPUs", positive),
        "pin": Key(list, None, "host CPU per vCPU (one entry per vCPU); unset = unpinned",
                   optional=True, item_type=int),
        "workload": WORKLOAD,
        "interrupts": INTERRUPTS,
        "sept": SEPT,
        "xfam": Key(int, 0x602E7, "a TD's XFAM (TD_PARAMS.xfam): the XSAVE features the TD may "
                    "use.  After every TDH.VP.ENTER KVM runs XSETBV unless the host XCR0 "
                    "equals xfam & kvm_caps.supported_xcr0, and writes IA32_XSS unless the "
                    "host XSS equals xfam & kvm_caps.supported_xss "
                    "(tdx_load_host_xsave_state).  Default: x87, SSE, AVX, AVX-512, PKRU and "
                    "AMX, as QEMU gives a TD on a Sapphire Rapids host (= the default host "
                    "XCR0, so no XSETBV)", _u64),
        "td_partitioning": Key(bool, False, "the TD has L2 VMs (TD partitioning), so the TDX "
                               "module may return the L2 exit statuses [faults] error_exit "
                               "injects.  KVM does not support TD partitioning: a what-if "
                               "for the exit_reason study"),
    },
    doc="A guest (TD).",
)

# --- the userspace VMM (tdsim.vmm) ---------------------------------------------------------
MAP_GPA_RESULTS = ("success", "eagain", "einval", "keep")
MSR_EXIT_REASONS = ("inval", "unknown", "filter")
MSR_FILTER_FLAGS = ("read", "write")


def _vmm_ret(v: Any) -> str | None:
    """One answer for ``hypercall.ret``: a name or any 64-bit value (negative = two's
    complement)."""
    if isinstance(v, str):
        return None if v in MAP_GPA_RESULTS else (
            f"{v!r} is not one of {', '.join(MAP_GPA_RESULTS)} (or give a number)")
    return None if -(1 << 63) <= v < 1 << 64 else "must fit in 64 bits"


def _map_gpa_results(v: Any) -> str | None:
    if not v:
        return "must be a non-empty list"
    for item in v:
        message = _vmm_ret(item)
        if message:
            return message
    return None


def _msr_flags(v: Any) -> str | None:
    if v and all(f in MSR_FILTER_FLAGS for f in v):
        return None
    return f"must be a non-empty list of {', '.join(MSR_FILTER_FLAGS)}"

VMM_DEVICE = Table(
    {
        "name": Key(str, None, "device name (default dev<index>)", optional=True,
                    index_default="dev{i}"),
        "space": Key(str, "pio", "address space: port IO or MMIO", choices=("pio", "mmio")),
        "base": Key(int, 0, "first port / GPA (shared bit stripped) of the device", _u64),
        "size": Key(int, 1, "ports / bytes the device claims", positive),
        "read_value": Key(int, 0, "value returned for every read (truncated to the access "
                          "size)", _u64),
        "ioeventfd": Key(bool, False, "writes are claimed in the kernel (KVM_IOEVENTFD on the "
                         "PIO/MMIO bus): no userspace exit; reads still go to the VMM"),
        "in_kernel_read": Key(bool, False, "reads are answered in the kernel (a device on "
                              "KVM's PIO/MMIO bus): R11 = read_value with no userspace exit"),
        "service_ns": Key(int, None, "VMM service time for this device's exits (default: "
                          "costs.vmm_io_ns / costs.vmm_mmio_ns)", non_negative, optional=True),
    },
    doc="A device the VMM emulates: reads return `read_value`; writes are recorded.",
)

VMM_CPUID = Table(
    {
        "leaf": Key(int, 0, "CPUID leaf (EAX)", _u64),
        "subleaf": Key(int, 0, "CPUID sub-leaf (ECX)", _u64),
        "eax": Key(int, 0, "EAX", _u64),
        "ebx": Key(int, 0, "EBX", _u64),
        "ecx": Key(int, 0, "ECX", _u64),
        "edx": Key(int, 0, "EDX", _u64),
        "significant_index": Key(bool, None, "KVM_CPUID_FLAG_SIGNIFCANT_INDEX: the entry "
                                 "answers only its own sub-leaf (default: set for the leaves "
                                 "KVM indexes, 4, 7, 0xb, 0xd, ...; an entry without it "
                                 "answers every sub-leaf)", optional=True),
    },
    doc="A CPUID entry the VMM gave KVM (KVM_SET_CPUID2), in order (the first match wins).  "
        "A leaf the table lacks reads as KVM's kvm_cpuid gives it: zeros inside its range, "
        "the maximum basic leaf above it (Intel vendor; docs/tdvmcall.md).",
)

HOST_HOTPLUG = Table(
    {
        "cpu": Key(int, 0, "the host CPU taken offline", non_negative),
        "offline_us": Key(NUM, 0.0, "when the offline starts (the tasks are moved off, then "
                          "KVM's teardown runs on the emptied CPU)", non_negative),
        "online_us": Key(NUM, None, "when it comes back (unset = stays offline)",
                         non_negative, optional=True),
    },
    doc="A scripted CPU hot-unplug: the scheduler moves the CPU's threads away (breaking "
        "pins to it), then kvm_offline_cpu runs there: tdx_disable_virtualization_cpu "
        "flushes the TD vCPUs associated with it, then drop_user_return_notifiers restores "
        "the user-return MSRs (docs/host-state.md).",
)


VMM_SET_MSR = Table(
    {
        "index": Key(int, 0, "MSR index", _u64),
        "value": Key(int, 0, "value written", _u64),
        "vcpus": Key(list, None, "vCPU indices it is set on (default: all)", optional=True,
                     item_type=int),
    },
    doc="A host-initiated write the VMM makes before the first KVM_RUN (KVM_SET_MSRS), "
        "through KVM's emulation of that MSR; a refused write stops the ioctl (listed in the "
        "result's vmm.set_msrs).",
)

VMM_MSR_FILTER_RANGE = Table(
    {
        "flags": Key(list, ["read", "write"], "accesses the range applies to", _msr_flags,
                     item_type=str),
        "base": Key(int, 0, "first MSR of the range", _u64),
        "nmsrs": Key(int, 1, "MSRs in the range", positive),
        "bitmap": Key(int, None, "bit i allows MSR base + i (default: all allowed)",
                      optional=True, check=lambda v: None if v >= 0 else "must be >= 0"),
    },
    doc="One range of the MSR filter; the first range containing the MSR for the access "
        "decides.",
)

VMM_MSR_FILTER = Table(
    {
        "default_allow": Key(bool, True, "the filter's action for an MSR no range covers "
                             "(false = KVM_MSR_FILTER_DEFAULT_DENY)"),
        "range": ArrayOfTables(VMM_MSR_FILTER_RANGE, min_items=0, default_items=0),
    },
    doc="KVM_X86_SET_MSR_FILTER (x2APIC MSRs are never filtered).  Without ranges, deny "
        "lists or default_allow = false there is no filter.",
)

VMM_MSR = Table(
    {
        "index": Key(int, 0, "MSR index", _u64),
        "value": Key(int, 0, "value the VMM returns for a read", _u64),
        "error": Key(bool, False, "the VMM fails the access (kvm_run msr.error = 1)"),
    },
    doc="The VMM's answer for an MSR access that KVM forwarded (KVM_EXIT_X86_RDMSR/WRMSR); "
        "MSRs not listed fail.",
)

VMM = Table(
    {
        "exit_hypercall": Key(bool, True, "KVM_CAP_EXIT_HYPERCALL enabled for "
                              "KVM_HC_MAP_GPA_RANGE (QEMU enables it; without it KVM answers "
                              "MapGPA with SUBFUNC_UNSUPPORTED)"),
        "map_gpa_results": Key(list, ["success"], "the VMM's hypercall.ret for each successive "
                               "KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE) of a vCPU, the last "
                               "repeating: success (0), eagain (EAGAIN, 11), einval (EINVAL, "
                               "22) -- the positive errnos today's KVM takes -- keep (leave "
                               "ret as KVM set it), or any number (a negative one as its "
                               "64-bit two's complement)", item_type=(str, int),
                               check=_map_gpa_results),
        "get_quote_ret": Key(int, 0, "TDVMCALL status the VMM puts in kvm_run for GetQuote "
                             "(0 = SUCCESS: the request is queued)", _u64),
        "setup_event_notify_ret": Key(int, 0, "TDVMCALL status the VMM returns for "
                                      "SetupEventNotifyInterrupt", _u64),
        "tdvmcall_info": Key(list, [3, 0, 0, 0], "R11..R14 the VMM returns for "
                             "GetTdVmCallInfo leaf 1 (QEMU: bit 0 GetQuote [UNVERIFIED], bit 1 "
                             "SetupEventNotifyInterrupt)", item_type=int,
                             check=lambda v: None if len(v) == 4 else "needs 4 values"),
        "fatal_error": Key(str, "stop", "what the VMM does on KVM_SYSTEM_EVENT_TDX_FATAL: stop "
                           "the VM (QEMU: its vCPUs are signalled out of KVM_RUN and never "
                           "resume) or resume the reporting vCPU", choices=("stop", "resume")),
        "unassigned_read": Key(int, 0xFFFFFFFFFFFFFFFF, "value a read of a port/GPA no device "
                               "claims returns (truncated to the access size)", _u64),
        "msr_exits": Key(list, [], "KVM_CAP_X86_USER_SPACE_MSR reasons that exit to the VMM "
                         "instead of failing the access: inval, unknown, filter",
                         item_type=str,
                         check=lambda v: None if all(r in MSR_EXIT_REASONS for r in v) else
                         f"items must be among {', '.join(MSR_EXIT_REASONS)}"),
        "msr_filter_deny_read": Key(list, [], "MSR indices the VMM's MSR filter "
                                    "(KVM_X86_SET_MSR_FILTER) denies for reads (one-MSR ranges "
                                    "ahead of msr_filter.range)", item_type=int),
        "msr_filter_deny_write": Key(list, [], "MSR indices the MSR filter denies for writes",
                                     item_type=int),
        "msr_filter": VMM_MSR_FILTER,
        "kvm_pv_features": Key(int, None, "PV feature bits of the guest CPUID (the VMM adds the "
                               "KVM signature leaf 0x40000000 and 0x40000001 EAX = this to its "
                               "table; bits: PV_UNHALT 7, PV_SEND_IPI 11, POLL_CONTROL 12, "
                               "PV_SCHED_YIELD 13)", optional=True,
                               check=lambda v: None if 0 <= v < 1 << 32 else
                               "must be a 32-bit value"),
        "enforce_pv_feature_cpuid": Key(bool, False, "KVM_CAP_ENFORCE_PV_FEATURE_CPUID on every "
                                        "vCPU: KVM refuses the PV hypercalls and MSRs whose "
                                        "feature bit the guest CPUID lacks (without it KVM "
                                        "allows them all)"),
        "get_msrs": Key(list, [], "MSRs the VMM reads back from every vCPU at the end of the "
                        "run (KVM_GET_MSRS, host-initiated), reported in the result's "
                        "vmm.get_msrs", item_type=int),
        "device": ArrayOfTables(VMM_DEVICE, min_items=0, default_items=0),
        "cpuid": ArrayOfTables(VMM_CPUID, min_items=0, default_items=0),
        "msr": ArrayOfTables(VMM_MSR, min_items=0, default_items=0),
        "set_msr": ArrayOfTables(VMM_SET_MSR, min_items=0, default_items=0),
    },
    doc="The userspace VMM: its answers to KVM's exits and the KVM capabilities it enables.",
)


def _rate(doc: str) -> Key:
    return Key(NUM, 0.0, doc + "; 0 = off", non_negative)


def _prob(doc: str) -> Key:
    return Key(NUM, 0.0, doc + "; 0 = off", probability)


def _byte_list(v: Any) -> str | None:
    if v and all(0 <= x <= 0xFFFF for x in v):
        return None
    return "must be a non-empty list of 0..65535"


def _fault_keys() -> dict[str, Key | Table | Map | ArrayOfTables]:
    """The [faults] table: every knob declared in `tdsim.faults.FAULT_KNOBS` (rates per
    simulated second, per vCPU or per TD; probabilities per TDH.VP.ENTER attempt, per entry
    attempt for mmu_reload_fail; all off by default), plus the knobs' parameters."""
    keys: dict[str, Key | Table | Map | ArrayOfTables] = {}
    for knob in _faults.FAULT_KNOBS:
        doc = f"abort {knob.path}: {knob.doc}" if knob.path else knob.doc
        keys[knob.key] = _rate(doc) if knob.kind == "rate" else _prob(doc)
    keys["sept_zap_us"] = Key(NUM, 20.0, "abort D: how long wait_for_sept_zap stays set",
                              positive)
    keys["operand_busy_ids"] = Key(list, [0x92, 0xA9, 0x82, 0x80], "operand ids drawn for "
                                   "OPERAND_BUSY (SEPT tree, TD epoch, TDVPR, TDR)",
                                   _byte_list, item_type=int)
    keys["error_exit_low_bits"] = Key(list, [0, 1, 77, 49], "low bits of error_exit "
                                      "statuses (0 reads as EXCEPTION_NMI, 1 "
                                      "EXTERNAL_INTERRUPT, 77 TDCALL, 49 EPT_MISCONFIG)",
                                      _byte_list, item_type=int)
    return keys


FAULTS = Table(_fault_keys(),
               doc="Fault injection: every late entry abort path (docs/late-aborts.md).")


# --- the scripted schedule (tdsim.schedule; docs/hunt.md) ------------------------------------
SCHEDULE_EVENT = Table(
    {
        "kind": Key(str, None, "what is injected (docs/hunt.md: what each kind does and "
                    "where it can land)", choices=tuple(_schedule.KINDS), optional=True),
        "vcpu": Key(str, None, "the vCPU it targets and whose entry segments place it "
                    "(td0.vcpu1)", optional=True),
        "entry": Key(int, None, "which entry segment of that vCPU (0 = its first; every "
                     "TDH.VP.ENTER and every wait_for_sept_zap spin begins one)",
                     non_negative, optional=True),
        "at": Key(str, None, "where in that segment: before_check, after_check, in_guest, "
                  "exit (a module outcome lands on the segment's TDH.VP.ENTER, "
                  "mmu_reload_fail on its entry attempt)",
                  choices=_schedule.LANDMARKS, optional=True),
        "delay_ns": Key(int, 0, "how long after the landmark", non_negative),
        "t_ns": Key(int, None, "an absolute time instead of entry and at", non_negative,
                    optional=True),
        "detail": Key(int, None, "the OPERAND_BUSY operand id, the error_exit low bits or "
                      "the sw_error status (default: the first of the scenario's list)",
                      optional=True),
        "cpu": Key(int, None, "host_irq / host_nmi at t_ns: the host CPU (instead of a "
                   "vCPU)", non_negative, optional=True),
    },
    doc="One injected event of the schedule.",
)

SCHEDULE = Table(
    {
        "random_sources": Key(bool, True, "the random sources of what the schedule's events "
                              "inject keep running: the [faults] knobs, device interrupts, TLB "
                              "flushes, VMM and host NMIs (false: only the schedule injects "
                              "them, as when replaying a recorded run)"),
        "event": ArrayOfTables(SCHEDULE_EVENT, min_items=0, default_items=0),
        "guest": Map(None, Key(list, [], "the calls ending the vCPU's compute periods, in "
                               "order, then the last one repeating: TDVMCALL kinds, or "
                               "{ call = KIND, compute_ns = N } for another compute time "
                               "than the workload's", _schedule.check_periods),
                     doc="per vCPU (\"td0.vcpu0\" = [...]), what its statistical guest "
                         "does instead of drawing from its mix"),
    },
    doc="A scripted schedule (docs/hunt.md): injected events placed against the vCPUs' "
        "run-loop landmarks, and the guests' calls; on top of the random sources above "
        "(`tdsim hunt` writes reproducers with those off).",
)


def _metric_bound(v: Any) -> str | None:
    """An expected metric: a number (exact) or ``{min = .., max = ..}`` (either optional)."""
    if not isinstance(v, dict):
        return None
    if not v or set(v) - {"min", "max"}:
        return "expected a number or { min = N, max = N }"
    for k, bound in v.items():
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            return f"{k} must be a number"
    if "min" in v and "max" in v and v["min"] > v["max"]:
        return "min > max"
    return None


# Expectations of a scenario used as a regression test (`tdsim check`, pytest).
def _expect_keys() -> dict[str, Any]:
    return {
        "metrics": Map(None, Key((int, float, dict), None, "exact value, or { min = N, max = N } "
                                 "(inclusive; either bound may be left out); a metric the run "
                                 "does not report counts as 0", _metric_bound),
                       doc="expected metrics of the run, by metric name (as in the JSON "
                           "result's `metrics`)"),
        "violations_none": Key(bool, False, "the run must record no invariant violation"),
        "violations_must": Key(list, [], "invariants (by name) that must be violated at least "
                               "once", item_type=str),
        "violations_must_not": Key(list, [], "invariants (by name) that must not be violated",
                                   item_type=str),
    }


EXPECT_CALL = Table(
    {
        "vcpu": Key(str, "td0.vcpu0", "the scripted vCPU (dotted name, as in the result's "
                    "`calls`)"),
        "step": Key(int, 0, "the program step (its number in the calls table)",
                    non_negative),
        "nth": Key(int, 1, "which record of that step (a step in a loop runs several times)",
                   positive),
        "status": Key(str, None, "R10's status name the guest got back (SUCCESS, "
                      "INVALID_OPERAND, ...)", optional=True),
        "kvm": Key(str, None, "in_kernel, userspace or kvm_run_error", optional=True),
        "regs_out": Key(dict, None, "registers the guest got back, e.g. { r10 = 0, r11 = 0x42 "
                        "} (those given are compared)", optional=True),
        "regs_written": Key(list, None, "exactly the registers of R10..R15 KVM wrote back",
                            optional=True, item_type=str),
        "exits": Key(list, None, "the exits to userspace, in order: one table each, compared "
                     "on the keys it gives (e.g. { exit_reason = \"KVM_EXIT_MMIO\", mmio = "
                     "{ phys_addr = 0x1000, len = 4 } }; `before_vmm` = kvm_run as KVM filled "
                     "it)", optional=True, item_type=dict),
        "vp_enter_ret": Key(int, None, "a vp_enter step's TDH.VP.ENTER status", optional=True),
        "exit_reason": Key(str, None, "a vp_enter step: the exit reason KVM derived "
                           "(INVALID for an error status)", optional=True),
        "handle_exit": Key(int, None, "a vp_enter step: what tdx_handle_exit returned",
                           optional=True),
        "kvm_run": Key(int, None, "KVM_RUN's error (e.g. -22)", optional=True),
    },
    doc="A scripted call (or vp_enter outcome) the run must record with these values; "
        "the keys not given are not checked.",
)

EXPECT_MSR = Table(
    {
        "vcpu": Key(str, "td0.vcpu0", "the vCPU"),
        "index": Key(int, 0, "the MSR (listed in [vmm] get_msrs)", _u64),
        "value": Key(int, None, "what KVM_GET_MSRS reads at the end (unset: the read must "
                     "fail)", optional=True),
    },
    doc="An MSR value KVM_GET_MSRS must read back at the end of the run.",
)

EXPECT = Table(
    {
        **_expect_keys(),
        "call": ArrayOfTables(EXPECT_CALL, min_items=0, default_items=0),
        "msr": ArrayOfTables(EXPECT_MSR, min_items=0, default_items=0),
        "strategy": Map(None, Table(_expect_keys()),
                        doc="more expectations for the run of one strategy, added to the "
                            "ones above; the keys of `[expect.strategy]` are strategy names "
                            '(`[expect.strategy."v6.16"]`)'),
    },
    doc="Expectations checked by `tdsim check` and by the test suite (a scenario with any "
        "expectation is a test).  They apply to the run of every strategy in `kvm.compare` "
        "(or of `kvm.host_state` alone).",
)

SCHEMA = Table(
    {
        "sim": Table(
            {
                "duration_us": Key(NUM, 10000.0, "simulated time", positive),
                "seed": Key(int, 1, "run seed; every random stream derives from it",
                            non_negative),
                "warmup_us": Key(NUM, 0.0, "warm-up: metrics count only what happens after "
                                 "it (CPU time parts then sum to duration - warmup); "
                                 "violations are always all reported", non_negative),
            }
        ),
        "host": Table(
            {
                "cpus": Key(int, 4, "host logical CPUs", positive),
                "tick_hz": Key(NUM, 250.0, "host timer tick; a tick on a CPU running a guest is "
                               "an EXTERNAL_INTERRUPT exit; 0 = off (nohz_full)", non_negative),
                "tasks": Key(int, 0, "other host tasks (user threads), unpinned",
                             non_negative),
                "task_run_us": Key(NUM, 500.0, "mean CPU burst of a host task", positive),
                "task_sleep_us": Key(NUM, 2000.0, "mean sleep of a host task between bursts",
                                     non_negative),
                "task_dist": Key(str, "exp", "distribution of task run/sleep times",
                                 choices=("fixed", "exp")),
                "timeslice_us": Key(NUM, 3000.0, "scheduler time slice when a CPU has more "
                                    "than one runnable thread", positive),
                "wakeup_preempt": Key(bool, True, "a waking thread preempts the running one "
                                      "(otherwise it waits for the slice to end)"),
                "nmi_hz": Key(NUM, 0.0, "host NMIs (perf / NMI watchdog) per CPU per second; "
                              "one hitting a running TD is an EXCEPTION_NMI exit; 0 = off",
                              non_negative),
                # host state a TD exit can leave changed (docs/host-state.md)
                "debugctl": Key(int, 0, "IA32_DEBUGCTL as the host runs with it (LBR, BTS, "
                                "bus-lock detection): a bit outside BTF | FREEZE_PERFMON_ON_PMI "
                                "| FREEZE_IN_SMM (0x5002) makes tdx_vcpu_run rewrite it after "
                                "every TDH.VP.ENTER; 0 = none in use", _u64),
                "xcr0": Key(int, 0x602E7, "the host's XCR0 (x87, SSE, AVX, AVX-512, PKRU, AMX: "
                            "a Sapphire Rapids host)", _u64),
                "xss": Key(int, 0x800, "the host's IA32_XSS (default CET_USER: a kernel with "
                           "user shadow stacks); KVM rewrites it after every TDH.VP.ENTER "
                           "unless it equals the TD's xfam & kvm_caps.supported_xss", _u64),
                "pkru": Key(int, 0x55555554, "PKRU of the VMM threads (the kernel's default "
                            "init_pkru_value with protection keys: only key 0 accessible); "
                            "non-zero -> WRPKRU after every TDH.VP.ENTER; 0 = a host without "
                            "OSPKE", _u64),
                "hotplug": ArrayOfTables(HOST_HOTPLUG, min_items=0, default_items=0),
                "gs_base_change_hz": Key(NUM, 0.0, "how often a thread's user code (the VMM "
                                         "servicing exits on a vCPU thread, a host task) "
                                         "changes its GS base, per second of user time; "
                                         "0 = never", non_negative),
                "gs_base_change": Key(str, "arch_prctl", "how it changes it: arch_prctl "
                                      "(ARCH_SET_GS: thread.gsbase follows) or wrgsbase "
                                      "(FSGSBASE in user mode: thread.gsbase is stale until "
                                      "the next context switch)",
                                      choices=("arch_prctl", "wrgsbase")),
            }
        ),
        "kvm": Table(
            {
                "host_state": Key(str, "current", "host-state strategy: current, v6.16, eager, "
                                  'or "package.module:Class" / "path/file.py:Class"',
                                  _strategy_check),
                "compare": Key(list, [], "strategies to compare on this scenario: `tdsim run` "
                               "runs it once per strategy with the same seed (paired) and "
                               "prints them side by side; empty = run host_state only",
                               item_type=str),
                "regs_layout": Key(str, "in_place", "GPR marshalling on TD exit/entry: "
                                   "\"in_place\" = vp_enter_args laid out like regs[] and used "
                                   "in place (no bulk copy, as today's KVM uses vp_enter_args "
                                   "directly); \"copy\" = tdx_module_args (volatile/non-volatile "
                                   "order) copied to regs[] after every exit and back before "
                                   "every entry; counted as regs.copies / regs.bytes",
                                   choices=("in_place", "copy")),
                "tdvmcall_abi": Key(str, "current", "the generation of KVM's TDVMCALL handling "
                                    "(tdsim/tdvmcall_abi.py, docs/tdvmcall.md): \"current\" "
                                    "(kvm-x86: MapGPA takes positive EAGAIN/EINVAL from the "
                                    "VMM, other values fail KVM_RUN; 16 x2APIC registers "
                                    "emulated), \"v6.16\" (the release: any MapGPA error -> "
                                    "INVALID_OPERAND; the x2APIC range emulated), "
                                    "\"v6.16-rc1\" (as first merged: also no "
                                    "SetupEventNotifyInterrupt)",
                                    choices=tuple(_tdvmcall_abi.GENERATIONS)),
                # how tdx_to_vmx_exit_reason reads vp_enter_ret (docs/late-aborts.md)
                "exit_reason": Key(str, "checked", "TDX exit-status handling: checked = bits "
                                   "15:0 are an exit reason only for the five valid statuses "
                                   "(today's KVM); raw = bits 31:0 taken whatever the status "
                                   "(the early union tdx_exit_reason code)",
                                   choices=("checked", "raw")),
                "halt_poll_ns": Key(int, 0, "halt polling (kvm.halt_poll_ns): a halted vCPU "
                                    "polls for events this long before blocking; fixed (the "
                                    "grow/shrink heuristics are not modelled); 0 = off",
                                    non_negative),
                "lapic_timer_advance_ns": Key(int, 0, "kvm.lapic_timer_advance_ns: the guest "
                                              "timer's hrtimer fires this much before the "
                                              "deadline and kvm_wait_lapic_expire spins at "
                                              "entry until the deadline when the timer vector "
                                              "is pending; fixed (no adaptive tuning); 0 = off",
                                              non_negative),
                "supported_xss": Key(int, 0, "KVM_SUPPORTED_XSS: the supervisor XSAVE features "
                                     "KVM virtualizes (kvm_caps.supported_xss = host xss & "
                                     "this).  0 as in Linux 6.16 (no CET virtualization); "
                                     "0x1800 (CET_USER | CET_KERNEL) for a KVM with CET",
                                     _u64),
            }
        ),
        "vm": ArrayOfTables(VM, min_items=1, default_items=1),
        "costs": COSTS,
        "vmm": VMM,
        "faults": FAULTS,
        "schedule": SCHEDULE,
        "expect": EXPECT,
    }
)
