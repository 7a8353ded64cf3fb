"""The userspace VMM (QEMU's role): its answers to KVM's exits and the KVM set-up it did.

Set up (the ``[vmm]`` table), applied to KVM's state of each VM (`tdsim.kvm_x86.Kvm`) when
the VM is built: KVM_CAP_EXIT_HYPERCALL for KVM_HC_MAP_GPA_RANGE, the CPUID table
(KVM_SET_CPUID2, `tdsim.kvm_cpuid`, with the KVM PV leaves if ``kvm_pv_features`` is set),
KVM_CAP_ENFORCE_PV_FEATURE_CPUID, the MSR filter (KVM_X86_SET_MSR_FILTER) and which MSR
failures exit to it (KVM_CAP_X86_USER_SPACE_MSR), in-kernel devices (ioeventfds that take
writes, devices that answer reads), and per vCPU the host-initiated MSR writes of
KVM_SET_MSRS.  All guest memory starts private (KVM_SET_MEMORY_ATTRIBUTES at boot).

Service: `handle_exit` is called when the vCPU thread returns from KVM_RUN.  It reads
``vcpu.run``, writes the answer into it (what the completion callback will give the guest)
and returns the service time, which the vCPU thread then spends as preemptible user code.
A scripted guest's call may carry its own answer (``vmm = {...}`` on the step,
`tdsim.program`), which takes precedence over the defaults below:

* KVM_EXIT_IO / KVM_EXIT_MMIO: a device claiming the port / GPA (``[[vmm.device]]``) returns
  its ``read_value`` for a read and records a write; unclaimed reads return
  ``unassigned_read`` (truncated to the access size).
* KVM_EXIT_HYPERCALL (KVM_HC_MAP_GPA_RANGE): the next answer of ``map_gpa_results`` (per
  vCPU; the last repeats): a raw ``hypercall.ret`` or "keep" (leave KVM's 0).  An answer of
  0 converts the range (KVM_SET_MEMORY_ATTRIBUTES), as QEMU does.
* KVM_EXIT_TDX: GetQuote -> ``get_quote_ret`` (the quote itself is produced asynchronously
  into the shared buffer: not modelled); SetupEventNotifyInterrupt ->
  ``setup_event_notify_ret``; GetTdVmCallInfo leaf 1 -> ``tdvmcall_info`` in R11..R14.
* KVM_EXIT_X86_RDMSR / WRMSR: ``[[vmm.msr]]`` entries (reads return ``value``, writes store
  it; ``error = true`` or an unlisted MSR fails the access).
* KVM_EXIT_SYSTEM_EVENT (TDX fatal error): recorded; with ``fatal_error = "stop"`` (as
  QEMU) the VM stops: every vCPU thread parks and never re-enters KVM_RUN.
* KVM_EXIT_MEMORY_FAULT (KVM_RUN returned -EFAULT): QEMU's implicit conversion -- the range
  gets the attribute the access wanted -- and the vCPU runs again.

A scripted guest's call record gets each exit with ``kvm_run`` as the VMM left it and, under
``before_vmm``, the union member as KVM filled it.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Any

from . import arch
from .kvm_cpuid import KvmCpuid
from .tdvmcall import KVM_MAP_GPA_RANGE_ENCRYPTED
from .tdvmcall_msr import (
    MSR_EXIT_REASON_BITS,
    MsrFilter,
    kvm_set_msrs,
    kvm_vcpu_after_set_cpuid,
    tdx_get_msr,
)

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs, DeviceConfig, VmmConfig
    from .kvm_tdx import VcpuTdx
    from .kvm_x86 import Kvm

MAX_WRITES_RECORDED = 1000
PAGE_SHIFT = 12


class Device:
    """One emulated device on the port-IO or MMIO address space."""

    __slots__ = ("name", "space", "base", "end", "read_value", "ioeventfd", "in_kernel_read",
                 "service_ns", "reads", "writes", "writes_total")

    def __init__(self, d: DeviceConfig) -> None:
        self.name = d.name
        self.space = d.space
        self.base = d.base
        self.end = d.base + d.size
        self.read_value = d.read_value
        self.ioeventfd = d.ioeventfd
        self.in_kernel_read = d.in_kernel_read
        self.service_ns = d.service_ns
        self.reads = 0
        self.writes: list[list[int]] = []
        self.writes_total = 0

    def write(self, t: int, addr: int, size: int, data: int, in_kernel: bool) -> None:
        self.writes_total += 1
        if len(self.writes) < MAX_WRITES_RECORDED:
            self.writes.append([t, addr, size, data, int(in_kernel)])

    def kernel_read(self, addr: int, size: int) -> int:
        """A read KVM's bus gives the device in the kernel (``in_kernel_read``)."""
        self.reads += 1
        return self.read_value & ((1 << (8 * size)) - 1)


class KvmMemoryAttributes:
    """kvm->mem_attr_array of a TD as the VMM set it with KVM_SET_MEMORY_ATTRIBUTES: every
    GFN private (as at boot) except the ranges made shared, kept as sorted disjoint
    [start, end) GFN intervals."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def is_private(self, gfn: int) -> bool:
        i = bisect_right(self.starts, gfn) - 1
        return not (i >= 0 and gfn < self.ends[i])

    def set(self, gfn: int, npages: int, private: bool) -> None:
        """Set the attribute of [gfn, gfn + npages)."""
        lo, hi = gfn, gfn + npages
        keep = [(s, e) for s, e in zip(self.starts, self.ends, strict=True)
                if e <= lo or s >= hi]
        cut = [(s, e) for s, e in zip(self.starts, self.ends, strict=True)
               if not (e <= lo or s >= hi)]
        for s, e in cut:  # the parts of shared intervals outside the range stay shared
            if s < lo:
                keep.append((s, lo))
            if e > hi:
                keep.append((hi, e))
        if not private:
            keep.append((lo, hi))
        merged: list[tuple[int, int]] = []
        for s, e in sorted(keep):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.starts = [s for s, _e in merged]
        self.ends = [e for _s, e in merged]


class Vmm:
    """The VMM of the simulation (one for all VMs: the scenario's ``[vmm]``)."""

    def __init__(self, env: Environment, cfg: VmmConfig, costs: Costs) -> None:
        self.env = env
        self.costs = costs
        self.cfg = cfg
        self.devices = [Device(d) for d in cfg.devices]
        self.msrs = {index: [value, error] for index, (value, error) in cfg.msrs.items()}
        self.map_gpa_seq: dict[str, int] = {}
        self.system_events: list[dict[str, Any]] = []
        self.set_msrs: dict[str, dict[str, int]] = {}
        self.td_vcpus: list[VcpuTdx] = []

    # --- the VM's set-up ------------------------------------------------------------------
    def set_up_vm(self, vm: Kvm) -> None:
        """The KVM ioctls the VMM issues when it creates a VM: capabilities, CPUID, the MSR
        filter, user-space MSR exits, in-kernel devices."""
        cfg = self.cfg
        vm.hypercall_exit_enabled = cfg.exit_hypercall
        vm.cpuid = KvmCpuid(cfg.cpuid)
        kvm_vcpu_after_set_cpuid(vm)
        vm.enforce_pv_feature_cpuid = cfg.enforce_pv_feature_cpuid
        vm.msr_filter = (MsrFilter(cfg.msr_filter_default_allow, cfg.msr_filter_ranges)
                         if cfg.msr_filter_ranges is not None else None)
        mask = 0
        for reason in cfg.msr_exits:
            mask |= MSR_EXIT_REASON_BITS[reason]
        vm.user_space_msr_mask = mask
        vm.io_devices = self.devices  # KVM_IOEVENTFD / in-kernel devices on the buses
        vm.memory_attributes = KvmMemoryAttributes()

    def set_up_vcpu(self, vcpu: VcpuTdx) -> None:
        """KVM_SET_MSRS of the ``[[vmm.set_msr]]`` entries that name this vCPU (the result
        lists how many of them KVM set)."""
        self.td_vcpus.append(vcpu)
        entries = [(index, value) for index, value, vcpus in self.cfg.set_msrs
                   if vcpus is None or vcpu.vcpu_id in vcpus]
        if entries:
            done = kvm_set_msrs(vcpu, entries)
            self.set_msrs[vcpu.name] = {"asked": len(entries), "set": done}

    def find_device(self, space: str, addr: int) -> Device | None:
        for dev in self.devices:
            if dev.space == space and dev.base <= addr < dev.end:
                return dev
        return None

    # --- service ------------------------------------------------------------------------
    def handle_exit(self, vcpu: VcpuTdx) -> int:
        """Answer the exit in ``vcpu.run``; return the service time in ns."""
        run = vcpu.run
        log = vcpu.call_log
        recorded = log is not None and vcpu.tdvmcall_outstanding
        member = run.MEMBER.get(vcpu.run_exit_reason)
        before = dict(getattr(run, member)) if recorded and member is not None else None
        answer = log.vmm_answer() if recorded else None
        ns = self.answer(vcpu, answer if answer is not None else {})
        if ns is None:
            return 0
        if recorded:
            snap = run.snapshot()
            snap["t_ns"] = self.env.now
            if member is not None and before is not None:
                snap["before_vmm"] = {k: (list(v) if isinstance(v, list) else v)
                                      for k, v in before.items()}
            log.record_exit(snap)
        service = answer.get("service_ns") if answer is not None else None
        return int(service) if service is not None else ns

    def answer(self, vcpu: VcpuTdx, ans: dict[str, Any]) -> int | None:
        """Write the VMM's answer into ``vcpu.run``; its service time (None: an exit the VMM
        has nothing to do for)."""
        costs = self.costs
        cfg = self.cfg
        reason = vcpu.run_exit_reason
        run = vcpu.run
        if reason == arch.KVM_EXIT_IO:
            io = run.io
            return self._access(io, "pio", io["port"], io["size"], io["direction"] == 1,
                                costs.vmm_io_ns, ans)
        if reason == arch.KVM_EXIT_MMIO:
            mmio = run.mmio
            return self._access(mmio, "mmio", mmio["phys_addr"], mmio["len"],
                                bool(mmio["is_write"]), costs.vmm_mmio_ns, ans)
        if reason == arch.KVM_EXIT_HYPERCALL:
            hc = run.hypercall
            n = self.map_gpa_seq.get(vcpu.name, 0)
            self.map_gpa_seq[vcpu.name] = n + 1
            rets = cfg.map_gpa_rets
            ret = ans["ret"] if "ret" in ans else rets[min(n, len(rets) - 1)]
            if ret is not None:
                hc["ret"] = ret
            if hc["nr"] == arch.KVM_HC_MAP_GPA_RANGE and hc["ret"] == 0:
                args = hc["args"]   # KVM_SET_MEMORY_ATTRIBUTES, then success
                vcpu.vm.memory_attributes.set(args[0] >> PAGE_SHIFT, args[1],
                                              bool(args[2] & KVM_MAP_GPA_RANGE_ENCRYPTED))
            return costs.vmm_mapgpa_ns
        if reason == arch.KVM_EXIT_TDX:
            tdx = run.tdx
            nr = tdx["nr"]
            if nr == arch.TDVMCALL_GET_QUOTE:
                ret = cfg.get_quote_ret
            elif nr == arch.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT:
                ret = cfg.setup_event_notify_ret
            else:
                ret = arch.TDVMCALL_STATUS_SUCCESS
                regs = ans.get("regs", cfg.tdvmcall_info)
                tdx["r11"], tdx["r12"], tdx["r13"], tdx["r14"] = regs
            ret = ans.get("ret", ret)
            if ret is not None:
                tdx["ret"] = ret
            return costs.vmm_tdx_ns
        if reason in (arch.KVM_EXIT_X86_RDMSR, arch.KVM_EXIT_X86_WRMSR):
            msr = run.msr
            entry = self.msrs.get(msr["index"])
            if "error" in ans:
                error = ans["error"]
            else:  # a per-call value answers; else the [[vmm.msr]] entry, if any
                error = "data" not in ans and (entry is None or entry[1])
            if error:
                msr["error"] = int(error)
            elif reason == arch.KVM_EXIT_X86_RDMSR:
                msr["data"] = ans.get("data", entry[0] if entry is not None else 0)
            elif entry is not None:
                entry[0] = msr["data"]
            return costs.vmm_msr_ns
        if reason == arch.KVM_EXIT_SYSTEM_EVENT:
            self.system_events.append({"t_ns": self.env.now, "vcpu": vcpu.name,
                                       **run.snapshot()})
            if ans.get("stop", cfg.fatal_error == "stop"):
                self.stop_vm(vcpu)
            return costs.vmm_system_event_ns
        if reason == arch.KVM_EXIT_MEMORY_FAULT:
            mf = run.memory_fault
            vcpu.vm.memory_attributes.set(mf["gpa"] >> PAGE_SHIFT, mf["size"] >> PAGE_SHIFT,
                                          bool(mf["flags"] & arch.KVM_MEMORY_EXIT_FLAG_PRIVATE))
            return costs.vmm_mapgpa_ns
        return None

    def stop_vm(self, vcpu: VcpuTdx) -> None:
        """Stop the VM (QEMU's vm_stop): every vCPU thread parks at its next return to the
        VMM; the others are signalled out of KVM_RUN (-EINTR, KVM_EXIT_INTR)."""
        for other in vcpu.vm.vcpus:
            other.vm_stopped = True
            if other is not vcpu:
                other.raise_signal()
                other.kvm_vcpu_kick()

    def _access(self, fields: dict[str, Any], space: str, addr: int, size: int, write: bool,
                default_ns: int, ans: dict[str, Any]) -> int:
        dev = self.find_device(space, addr) if self.devices else None
        mask = (1 << (8 * size)) - 1
        if write:
            if dev is not None:
                dev.write(self.env.now, addr, size, fields["data"], False)
        elif "data" in ans:
            fields["data"] = ans["data"] & mask
        elif dev is not None:
            dev.reads += 1
            fields["data"] = dev.read_value & mask
        else:
            fields["data"] = self.cfg.unassigned_read & mask
        if dev is not None and dev.service_ns is not None:
            return dev.service_ns
        return default_ns

    def report(self) -> dict[str, Any]:
        """What the VMM saw, for the result document (empty when nothing was configured):
        device reads and writes, system events, KVM_SET_MSRS results, and the MSRs it reads
        back with KVM_GET_MSRS at the end (as hex strings of the index)."""
        out: dict[str, Any] = {}
        if self.devices:
            out["devices"] = {d.name: {"space": d.space, "reads": d.reads,
                                       "writes_total": d.writes_total,
                                       "writes": d.writes} for d in self.devices}
        if self.system_events:
            out["system_events"] = self.system_events
        if self.set_msrs:
            out["set_msrs"] = self.set_msrs
        if self.cfg.get_msrs and self.td_vcpus:
            got: dict[str, dict[str, int | None]] = {}
            for vcpu in self.td_vcpus:
                vals: dict[str, int | None] = {}
                for index in self.cfg.get_msrs:
                    r, data = tdx_get_msr(vcpu, index, True)
                    vals[f"{index:#x}"] = None if r else data
                got[vcpu.name] = vals
            out["get_msrs"] = got
        return out
