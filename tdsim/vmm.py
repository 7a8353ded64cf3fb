"""The userspace VMM (QEMU's role): its answers to KVM's exits and the KVM set-up it did.

Set up (the ``[vmm]`` table), applied to KVM's state of each VM (`tdsim.kvm_x86.Kvm`) when
the VM is built: KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE, the CPUID table
(KVM_SET_CPUID2), the MSR filter (KVM_X86_SET_MSR_FILTER) and which MSR failures exit to it
(KVM_CAP_X86_USER_SPACE_MSR), ioeventfds for devices whose writes KVM completes.

Service: `handle_exit` is called when the vCPU thread returns from KVM_RUN.  It reads
``vcpu.run``, writes the answer into it (what the completion callback will give the guest)
and returns the service time, which the vCPU thread then spends as preemptible user code:

* KVM_EXIT_IO / KVM_EXIT_MMIO: a device claiming the port / GPA (``[[vmm.device]]``) returns
  its ``read_value`` for a read and records a write; unclaimed reads return
  ``unassigned_read`` (truncated to the access size).
* KVM_EXIT_HYPERCALL (KVM_HC_MAP_GPA_RANGE): the next answer of ``map_gpa_results``
  (success 0, eagain -EAGAIN, einval -EINVAL; the last repeats), per vCPU.
* KVM_EXIT_TDX: GetQuote -> ``get_quote_ret`` (the quote itself is produced asynchronously
  into the shared buffer: not modelled); SetupEventNotifyInterrupt ->
  ``setup_event_notify_ret``; GetTdVmCallInfo leaf 1 -> ``tdvmcall_info`` in R11..R14.
* KVM_EXIT_X86_RDMSR / WRMSR: ``[[vmm.msr]]`` entries (reads return ``value``, writes store
  it; ``error = true`` or an unlisted MSR fails the access).
* KVM_EXIT_SYSTEM_EVENT (TDX fatal error): recorded; with ``fatal_error = "stop"`` (as
  QEMU) the VM stops: every vCPU thread parks and never re-enters KVM_RUN.

A scripted guest's call record gets each exit with the VMM's answer (``answer``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import arch
from .tdvmcall import EAGAIN, EINVAL, MSR_EXIT_REASON_BITS, U64

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs, DeviceConfig, VmmConfig
    from .kvm_tdx import VcpuTdx
    from .kvm_x86 import Kvm

MAX_WRITES_RECORDED = 1000
_MAP_GPA_RET = {"success": 0, "eagain": -EAGAIN & U64, "einval": -EINVAL & U64}


class Device:
    """One emulated device on the port-IO or MMIO address space."""

    __slots__ = ("name", "space", "base", "end", "read_value", "ioeventfd", "service_ns",
                 "reads", "writes", "writes_total")

    def __init__(self, d: DeviceConfig) -> None:
        self.name = d.name
        self.space = d.space
        self.base = d.base
        self.end = d.base + d.size
        self.read_value = d.read_value
        self.ioeventfd = d.ioeventfd
        self.service_ns = d.service_ns
        self.reads = 0
        self.writes: list[list[int]] = []
        self.writes_total = 0

    def write(self, t: int, addr: int, size: int, data: int, in_kernel: bool) -> None:
        self.writes_total += 1
        if len(self.writes) < MAX_WRITES_RECORDED:
            self.writes.append([t, addr, size, data, int(in_kernel)])


class Vmm:
    """The VMM of the simulation (one for all VMs: the scenario's ``[vmm]``)."""

    def __init__(self, env: Environment, cfg: VmmConfig, costs: Costs) -> None:
        self.env = env
        self.costs = costs
        self.cfg = cfg
        self.map_gpa_results = [_MAP_GPA_RET[r] for r in cfg.map_gpa_results]
        self.devices = [Device(d) for d in cfg.devices]
        self.msrs = {index: [value, error] for index, (value, error) in cfg.msrs.items()}
        self.map_gpa_seq: dict[str, int] = {}
        self.system_events: list[dict[str, Any]] = []

    # --- the VM's set-up ------------------------------------------------------------------
    def set_up_vm(self, vm: Kvm) -> None:
        """The KVM ioctls the VMM issues when it creates a VM: capabilities, CPUID, the MSR
        filter, user-space MSR exits, ioeventfds."""
        cfg = self.cfg
        vm.hypercall_exit_enabled = cfg.exit_hypercall
        vm.cpuid_entries = cfg.cpuid
        vm.msr_filter_deny_read = cfg.msr_filter_deny_read
        vm.msr_filter_deny_write = cfg.msr_filter_deny_write
        mask = 0
        for reason in cfg.msr_exits:
            mask |= MSR_EXIT_REASON_BITS[reason]
        vm.user_space_msr_mask = mask
        vm.io_devices = self.devices  # KVM_IOEVENTFD for those with ioeventfd = true

    def find_device(self, space: str, addr: int) -> Device | None:
        for dev in self.devices:
            if dev.space == space and dev.base <= addr < dev.end:
                return dev
        return None

    # --- service ------------------------------------------------------------------------
    def handle_exit(self, vcpu: VcpuTdx) -> int:
        """Answer the exit in ``vcpu.run``; return the service time in ns."""
        costs = self.costs
        cfg = self.cfg
        reason = vcpu.run_exit_reason
        run = vcpu.run
        if reason == arch.KVM_EXIT_IO:
            ns = self._access(run.io, "pio", run.io["port"], run.io["size"],
                              run.io["direction"] == 1, costs.vmm_io_ns)
        elif reason == arch.KVM_EXIT_MMIO:
            ns = self._access(run.mmio, "mmio", run.mmio["phys_addr"], run.mmio["len"],
                              bool(run.mmio["is_write"]), costs.vmm_mmio_ns)
        elif reason == arch.KVM_EXIT_HYPERCALL:
            n = self.map_gpa_seq.get(vcpu.name, 0)
            self.map_gpa_seq[vcpu.name] = n + 1
            results = self.map_gpa_results
            run.hypercall["ret"] = results[min(n, len(results) - 1)]
            ns = costs.vmm_mapgpa_ns
        elif reason == arch.KVM_EXIT_TDX:
            tdx = run.tdx
            nr = tdx["nr"]
            if nr == arch.TDVMCALL_GET_QUOTE:
                tdx["ret"] = cfg.get_quote_ret
            elif nr == arch.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT:
                tdx["ret"] = cfg.setup_event_notify_ret
            elif nr == arch.TDVMCALL_GET_TD_VM_CALL_INFO:
                tdx["ret"] = arch.TDVMCALL_STATUS_SUCCESS
                tdx["r11"], tdx["r12"], tdx["r13"], tdx["r14"] = cfg.tdvmcall_info
            ns = costs.vmm_tdx_ns
        elif reason in (arch.KVM_EXIT_X86_RDMSR, arch.KVM_EXIT_X86_WRMSR):
            msr = run.msr
            entry = self.msrs.get(msr["index"])
            if entry is None or entry[1]:
                msr["error"] = 1
            elif reason == arch.KVM_EXIT_X86_RDMSR:
                msr["data"] = entry[0]
            else:
                entry[0] = msr["data"]
            ns = costs.vmm_msr_ns
        elif reason == arch.KVM_EXIT_SYSTEM_EVENT:
            self.system_events.append({"t_ns": self.env.now, "vcpu": vcpu.name,
                                       **run.snapshot()})
            if cfg.fatal_error == "stop":
                self.stop_vm(vcpu)
            ns = costs.vmm_system_event_ns
        else:
            return 0
        log = vcpu.call_log
        if log is not None and vcpu.tdvmcall_outstanding:
            snap = run.snapshot()
            snap["t_ns"] = self.env.now
            log.record_exit(snap)
        return ns

    def stop_vm(self, vcpu: VcpuTdx) -> None:
        """Stop the VM (QEMU's vm_stop): every vCPU thread parks at its next return to the
        VMM; the others are signalled out of KVM_RUN (-EINTR, KVM_EXIT_INTR)."""
        for other in vcpu.vm.vcpus:
            other.vm_stopped = True
            if other is not vcpu:
                other.raise_signal()
                other.kvm_vcpu_kick()

    def _access(self, fields: dict[str, Any], space: str, addr: int, size: int, write: bool,
                default_ns: int) -> int:
        dev = self.find_device(space, addr) if self.devices else None
        mask = (1 << (8 * size)) - 1
        if write:
            if dev is not None:
                dev.write(self.env.now, addr, size, fields["data"], False)
        elif dev is not None:
            dev.reads += 1
            fields["data"] = dev.read_value & mask
        else:
            fields["data"] = self.cfg.unassigned_read & mask
        if dev is not None and dev.service_ns is not None:
            return dev.service_ns
        return default_ns

    def report(self) -> dict[str, Any]:
        """What the VMM saw, for the result document (empty when nothing was configured)."""
        out: dict[str, Any] = {}
        if self.devices:
            out["devices"] = {d.name: {"space": d.space, "reads": d.reads,
                                       "writes_total": d.writes_total,
                                       "writes": d.writes} for d in self.devices}
        if self.system_events:
            out["system_events"] = self.system_events
        return out
