"""Typed, frozen views of a resolved scenario: what each model component is configured with.

The scenario schema (`tdsim.schema`) is the only place where keys, types and defaults live; the
loader resolves a scenario into plain data with every default filled in.  The build step
(`tdsim.build`) turns that data into the views below and hands each component the view it
needs -- a vCPU gets the costs and the KVM settings, a zapper its TD's SEPT settings -- so no
component reads the scenario itself and a misspelt field is a type error, not a silent
default.  Field names are the schema's keys; times are converted to integer nanoseconds here
(``*_us`` keys become ``*_ns`` fields).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, TypeVar

from .kvm_cpuid import (
    KVM_CPUID_FEATURES,
    KVM_CPUID_SIGNATURE,
    KVM_SIGNATURE,
    KvmCpuidEntry2,
    cpuid_function_is_indexed,
)


def us_to_ns(us: float) -> int:
    """Microseconds (as given in a scenario) to the model's integer nanoseconds."""
    return round(us * 1000)


def hz_to_period_ns(hz: float) -> int:
    """The period of a rate, in whole nanoseconds (0 for a rate of 0)."""
    return int(1e9 / hz) if hz > 0 else 0


@dataclass(frozen=True, slots=True)
class Costs:
    """``[costs]``: per-operation costs in ns (meaning and status of each: `tdsim schema`)."""

    wrmsr_ns: int
    rdmsr_ns: int
    xsetbv_ns: int
    wrpkru_ns: int
    seamcall_ns: int
    td_entry_ns: int
    td_exit_ns: int
    first_entry_flush_ns: int
    vcpu_enter_guest_ns: int
    exit_handling_ns: int
    guest_tdvmcall_ns: int
    tdvmcall_cpuid_ns: int
    tdvmcall_msr_ns: int
    tdvmcall_hypercall_ns: int
    tdvmcall_hlt_ns: int
    tdvmcall_userspace_ns: int
    kvm_run_ioctl_ns: int
    vmm_io_ns: int
    vmm_mmio_ns: int
    vmm_mapgpa_ns: int
    vcpu_load_ns: int
    vcpu_put_ns: int
    context_switch_ns: int
    ipi_ns: int
    host_irq_ns: int
    tdh_vp_flush_ns: int
    tdh_vp_rd_ns: int
    tdh_vp_wr_ns: int
    guest_irq_ns: int
    tdvmcall_simple_ns: int
    regs_copy_ns: int
    vmm_tdx_ns: int
    vmm_msr_ns: int
    vmm_system_event_ns: int
    vmx_entry_ns: int
    vmx_exit_ns: int
    vmx_exit_handling_ns: int
    ept_violation_ns: int
    notify_resume_ns: int
    in_guest_mode_window_ns: int
    icr_write_ns: int
    host_nmi_ns: int
    guest_nmi_ns: int
    tdh_mem_range_block_ns: int
    tdh_mem_track_ns: int
    tdh_mem_page_remove_ns: int
    tdh_mem_page_aug_ns: int
    tdh_phymem_page_wbinvd_ns: int
    tdh_vp_enter_epoch_ns: int
    kvm_private_fault_ns: int


@dataclass(frozen=True, slots=True)
class SimConfig:
    """``[sim]``."""

    seed: int
    duration_ns: int
    warmup_ns: int


@dataclass(frozen=True, slots=True)
class HostConfig:
    """``[host]``."""

    cpus: int
    tick_hz: float
    tasks: int
    task_run_ns: int
    task_sleep_ns: int
    task_dist_exp: bool
    timeslice_ns: int
    wakeup_preempt: bool
    nmi_hz: float
    debugctl: int
    xcr0: int
    xss: int
    pkru: int
    gs_base_change_hz: float
    gs_base_change: str         # "arch_prctl" | "wrgsbase"
    # [[host.hotplug]]: (cpu, offline at ns, online at ns or None), in the file's order
    hotplug: tuple[tuple[int, int, int | None], ...]


@dataclass(frozen=True, slots=True)
class KvmConfig:
    """``[kvm]``: the KVM build and module parameters the run models."""

    host_state: str
    regs_layout: str            # "in_place" | "copy"
    tdvmcall_abi: str           # a generation of tdsim.tdvmcall_abi.GENERATIONS
    exit_reason_raw: bool       # exit_reason = "raw"
    halt_poll_ns: int
    lapic_timer_advance_ns: int
    supported_xss: int          # KVM_SUPPORTED_XSS


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """``[vm.workload]``."""

    compute_ns: int
    compute_exp: bool
    timer_hz: float
    timer_oneshot: bool
    mix: Mapping[str, float]
    program: tuple[Any, ...]
    record_calls: int
    tsc_aux_read_hz: float


@dataclass(frozen=True, slots=True)
class InterruptConfig:
    """``[vm.interrupts]``."""

    ipi_hz: float
    ipi_pattern: str
    ipi_targets: int
    shootdown_targets: int
    device_irq_hz: float
    device_irq_vcpus: tuple[int, ...]
    nmi_hz: float
    device_posting: str  # "kvm" | "vtd"
    tlb_flush_hz: float
    hlt_irqs_off_p: float


@dataclass(frozen=True, slots=True)
class SeptConfig:
    """``[vm.sept]``."""

    zap_hz: float
    zap_pages: int
    block_busy_p: float
    remove_busy_p: float
    private_fault_hz: float
    aug_busy_p: float


@dataclass(frozen=True, slots=True)
class VmConfig:
    """One ``[[vm]]``."""

    index: int
    name: str
    flavor: str                 # "tdx" | "vmx"
    vcpus: int
    pin: tuple[int, ...] | None
    workload: WorkloadConfig
    interrupts: InterruptConfig
    sept: SeptConfig
    xfam: int


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One ``[[vmm.device]]``."""

    name: str
    space: str                  # "pio" | "mmio"
    base: int
    size: int
    read_value: int
    ioeventfd: bool
    in_kernel_read: bool
    service_ns: int | None


@dataclass(frozen=True, slots=True)
class MsrFilterRangeConfig:
    """One range of the VMM's MSR filter: flags as KVM_MSR_FILTER_READ/WRITE bits."""

    flags: int
    base: int
    nmsrs: int
    bitmap: int


@dataclass(frozen=True, slots=True)
class VmmConfig:
    """``[vmm]``: the userspace VMM's answers and the KVM capabilities it enabled."""

    exit_hypercall: bool
    get_quote_ret: int
    setup_event_notify_ret: int
    tdvmcall_info: tuple[int, int, int, int]
    fatal_error: str
    unassigned_read: int
    msr_exits: tuple[str, ...]
    map_gpa_rets: tuple[int | None, ...]    # map_gpa_results as raw u64 (None: keep)
    msr_filter_default_allow: bool
    msr_filter_ranges: tuple[MsrFilterRangeConfig, ...] | None  # None: no filter
    enforce_pv_feature_cpuid: bool
    get_msrs: tuple[int, ...]
    set_msrs: tuple[tuple[int, int, tuple[int, ...] | None], ...]  # index, value, vCPUs
    devices: tuple[DeviceConfig, ...]
    cpuid: tuple[KvmCpuidEntry2, ...]
    msrs: Mapping[int, tuple[int, bool]]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything the model is configured with, one view per component."""

    sim: SimConfig
    host: HostConfig
    kvm: KvmConfig
    costs: Costs
    vms: tuple[VmConfig, ...]
    vmm: VmmConfig
    faults: Mapping[str, Any]   # [faults], by knob name (declared in tdsim.faults)
    # [schedule], resolved; `tdsim.schedule.from_data` types it (the build step does: the
    # schedule's event kinds are declared on top of the model, so config cannot import them)
    schedule: Mapping[str, Any]


T = TypeVar("T")


def _pick(cls: type[T], d: Mapping[str, Any], **extra: Any) -> T:
    """Build `cls` from the keys of `d` that it declares, plus `extra`."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in d.items() if k in names}, **extra)


# hypercall.ret values the VMM's answers name (the positive errnos today's KVM takes)
VMM_RET_NAMES: dict[str, int | None] = {"success": 0, "eagain": 11, "einval": 22, "keep": None}
_FILTER_FLAGS = {"read": 1, "write": 2}      # KVM_MSR_FILTER_READ / _WRITE


def vmm_ret(value: str | int) -> int | None:
    """A VMM answer for ``hypercall.ret`` as the raw u64 it writes (None: leave it)."""
    if isinstance(value, str):
        return VMM_RET_NAMES[value]
    return value & ((1 << 64) - 1)


def _msr_filter_ranges(vmm: Mapping[str, Any]) -> tuple[MsrFilterRangeConfig, ...] | None:
    """The filter's ranges: the deny lists (one MSR each) first, then msr_filter.range; None
    when the VMM sets no filter at all."""
    flt = vmm["msr_filter"]
    ranges = [MsrFilterRangeConfig(1, i, 1, 0) for i in vmm["msr_filter_deny_read"]]
    ranges += [MsrFilterRangeConfig(2, i, 1, 0) for i in vmm["msr_filter_deny_write"]]
    for r in flt["range"]:
        flags = sum(_FILTER_FLAGS[f] for f in set(r["flags"]))
        bitmap = r["bitmap"] if r["bitmap"] is not None else (1 << r["nmsrs"]) - 1
        ranges.append(MsrFilterRangeConfig(flags, r["base"], r["nmsrs"], bitmap))
    if not ranges and flt["default_allow"]:
        return None
    return tuple(ranges)


def _cpuid_entries(vmm: Mapping[str, Any]) -> tuple[KvmCpuidEntry2, ...]:
    """The CPUID table (KVM_SET_CPUID2), with the KVM leaves ``kvm_pv_features`` asks for."""
    out = [KvmCpuidEntry2(e["leaf"], e["subleaf"], e["significant_index"]
                            if e["significant_index"] is not None
                            else cpuid_function_is_indexed(e["leaf"]),
                            e["eax"], e["ebx"], e["ecx"], e["edx"]) for e in vmm["cpuid"]]
    if vmm["kvm_pv_features"] is not None:
        base, features = KVM_CPUID_SIGNATURE, KVM_CPUID_SIGNATURE + KVM_CPUID_FEATURES
        out.append(KvmCpuidEntry2(base, 0, False, features, *KVM_SIGNATURE))
        out.append(KvmCpuidEntry2(features, 0, False, vmm["kvm_pv_features"], 0, 0, 0))
    return tuple(out)


def from_data(d: Mapping[str, Any]) -> ModelConfig:
    """The views of a resolved scenario (``Scenario.data``)."""
    sim, host, kvm = d["sim"], d["host"], d["kvm"]
    vms = []
    for i, v in enumerate(d["vm"]):
        wl, intr = v["workload"], v["interrupts"]
        vms.append(VmConfig(
            index=i, name=v["name"], flavor=v["flavor"], vcpus=v["vcpus"],
            pin=tuple(v["pin"]) if v["pin"] is not None else None,
            workload=WorkloadConfig(
                compute_ns=us_to_ns(wl["compute_us"]), compute_exp=wl["compute_dist"] == "exp",
                timer_hz=wl["timer_hz"],
                timer_oneshot=wl["timer_mode"] == "oneshot" and wl["timer_hz"] > 0,
                mix=MappingProxyType(dict(wl["mix"])), program=tuple(wl["program"]),
                record_calls=wl["record_calls"], tsc_aux_read_hz=wl["tsc_aux_read_hz"]),
            interrupts=InterruptConfig(
                ipi_hz=intr["ipi_hz"], ipi_pattern=intr["ipi_pattern"],
                ipi_targets=intr["ipi_targets"], shootdown_targets=intr["shootdown_targets"],
                device_irq_hz=intr["device_irq_hz"],
                device_irq_vcpus=tuple(intr["device_irq_vcpus"]), nmi_hz=intr["nmi_hz"],
                tlb_flush_hz=intr["tlb_flush_hz"], hlt_irqs_off_p=intr["hlt_irqs_off_p"],
                device_posting=intr["device_posting"]),
            sept=_pick(SeptConfig, v["sept"]), xfam=v["xfam"]))
    vmm = d["vmm"]
    return ModelConfig(
        sim=SimConfig(seed=sim["seed"], duration_ns=us_to_ns(sim["duration_us"]),
                      warmup_ns=us_to_ns(sim["warmup_us"])),
        host=HostConfig(cpus=host["cpus"], tick_hz=host["tick_hz"], tasks=host["tasks"],
                        task_run_ns=us_to_ns(host["task_run_us"]),
                        task_sleep_ns=us_to_ns(host["task_sleep_us"]),
                        task_dist_exp=host["task_dist"] == "exp",
                        timeslice_ns=us_to_ns(host["timeslice_us"]),
                        wakeup_preempt=host["wakeup_preempt"], nmi_hz=host["nmi_hz"],
                        debugctl=host["debugctl"], xcr0=host["xcr0"], xss=host["xss"],
                        pkru=host["pkru"], gs_base_change_hz=host["gs_base_change_hz"],
                        gs_base_change=host["gs_base_change"],
                        hotplug=tuple((h["cpu"], us_to_ns(h["offline_us"]),
                                       None if h["online_us"] is None
                                       else us_to_ns(h["online_us"]))
                                      for h in host["hotplug"])),
        kvm=KvmConfig(host_state=kvm["host_state"], regs_layout=kvm["regs_layout"],
                      tdvmcall_abi=kvm["tdvmcall_abi"], exit_reason_raw=kvm["exit_reason"] == "raw",
                      halt_poll_ns=int(kvm["halt_poll_ns"]),
                      lapic_timer_advance_ns=int(kvm["lapic_timer_advance_ns"]),
                      supported_xss=kvm["supported_xss"]),
        costs=Costs(**{k: int(v) for k, v in d["costs"].items()}),
        vms=tuple(vms),
        vmm=VmmConfig(
            exit_hypercall=vmm["exit_hypercall"],
            get_quote_ret=vmm["get_quote_ret"],
            setup_event_notify_ret=vmm["setup_event_notify_ret"],
            tdvmcall_info=(vmm["tdvmcall_info"][0], vmm["tdvmcall_info"][1],
                           vmm["tdvmcall_info"][2], vmm["tdvmcall_info"][3]),
            fatal_error=vmm["fatal_error"], unassigned_read=vmm["unassigned_read"],
            msr_exits=tuple(vmm["msr_exits"]),
            map_gpa_rets=tuple(vmm_ret(r) for r in vmm["map_gpa_results"]),
            msr_filter_default_allow=vmm["msr_filter"]["default_allow"],
            msr_filter_ranges=_msr_filter_ranges(vmm),
            enforce_pv_feature_cpuid=vmm["enforce_pv_feature_cpuid"],
            get_msrs=tuple(vmm["get_msrs"]),
            set_msrs=tuple((m["index"], m["value"],
                            tuple(m["vcpus"]) if m["vcpus"] is not None else None)
                           for m in vmm["set_msr"]),
            devices=tuple(_pick(DeviceConfig, dev) for dev in vmm["device"]),
            cpuid=_cpuid_entries(vmm),
            msrs=MappingProxyType({m["index"]: (m["value"], m["error"]) for m in vmm["msr"]})),
        faults=MappingProxyType(dict(d["faults"])),
        schedule=MappingProxyType(dict(d["schedule"])),
    )
