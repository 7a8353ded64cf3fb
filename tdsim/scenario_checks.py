"""Scenario rules that relate several keys, and the resolution steps that need the file's
directory (user strategies, program files).

Each check takes the resolved data (every default filled in) and raises `Bad` with the key
path at the first problem; `tdsim.scenario` turns that into a one-line `ScenarioError` naming
the file.  Add a new relation between keys to `CROSS_CHECKS`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from tdsim.schema import BUILTIN_STRATEGIES

PathT = tuple[str | int, ...]


class Bad(Exception):
    """A problem at a key path; turned into a `tdsim.scenario.ScenarioError` at the top."""

    def __init__(self, path: PathT, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"


def _check_vm_names(data: dict[str, Any]) -> None:
    """VM names are unique (they scope every vCPU: ``td0.vcpu3``)."""
    seen: dict[str, int] = {}
    for i, vm in enumerate(data["vm"]):
        if vm["name"] in seen:
            raise Bad(("vm", i, "name"), f"duplicate VM name {vm['name']!r} "
                                          f"(also vm[{seen[vm['name']]}])")
        seen[vm["name"]] = i


def _check_pins(data: dict[str, Any]) -> None:
    """A pin list has one entry per vCPU, each an existing host CPU."""
    cpus = data["host"]["cpus"]
    for i, vm in enumerate(data["vm"]):
        pin = vm["pin"]
        if pin is None:
            continue
        if len(pin) != vm["vcpus"]:
            entries = "entry" if len(pin) == 1 else "entries"
            raise Bad(("vm", i, "pin"), f"has {len(pin)} {entries} but vcpus = {vm['vcpus']}: "
                                         f"give one host CPU per vCPU")
        for j, cpu in enumerate(pin):
            if not 0 <= cpu < cpus:
                raise Bad(("vm", i, "pin", j), f"CPU {cpu} does not exist: host.cpus = "
                                                f"{cpus} (valid 0..{cpus - 1})")


def _check_hotplug(data: dict[str, Any]) -> None:
    """Each scripted hot-unplug names an existing CPU, comes back after it went, and leaves
    at least one CPU online at every instant."""
    cpus = data["host"]["cpus"]
    spans = []
    for i, h in enumerate(data["host"]["hotplug"]):
        if not 0 <= h["cpu"] < cpus:
            raise Bad(("host", "hotplug", i, "cpu"),
                      f"CPU {h['cpu']} does not exist: host.cpus = {cpus}")
        end = h["online_us"]
        if end is not None and end <= h["offline_us"]:
            raise Bad(("host", "hotplug", i, "online_us"),
                      f"{end} is not after offline_us = {h['offline_us']}")
        spans.append((h["cpu"], h["offline_us"], float("inf") if end is None else end, i))
    for cpu, t0, t1, i in spans:
        if any(c == cpu and j != i and t0 < u1 and u0 < t1 for c, u0, u1, j in spans):
            raise Bad(("host", "hotplug", i), f"CPU {cpu} is taken offline again while "
                                              "already offline")
    for _, t0, _, i in spans:
        down = {c for c, u0, u1, _ in spans if u0 <= t0 < u1}
        if len(down) >= cpus:
            raise Bad(("host", "hotplug", i), f"at {t0} us no CPU would be left online")


def _check_mix(data: dict[str, Any]) -> None:
    """Each mix has a positive weight; a mix that halts has a timer to wake the vCPU."""
    for i, vm in enumerate(data["vm"]):
        workload = vm["workload"]
        mix = workload["mix"]
        if not any(w > 0 for w in mix.values()):
            raise Bad(("vm", i, "workload", "mix"),
                       "all weights are 0: give at least one TDVMCALL kind a positive weight")
        if mix.get("hlt", 0) > 0 and not workload["timer_hz"] > 0:
            raise Bad(("vm", i, "workload", "mix", "hlt"),
                       f"a halted vCPU could never be woken: set "
                       f"vm[{i}].workload.timer_hz > 0")


def resolve_programs(data: dict[str, Any], base_dir: str | os.PathLike[str]) -> None:
    """Scripted guests (`tdsim.program`): inline a ``program_file`` into ``program`` (the resolved
    scenario then carries the program itself) and check every program's steps."""
    from tdsim.program import ProgramError, compile_program, load_program_file

    for i, vm in enumerate(data["vm"]):
        workload = vm["workload"]
        if workload["program_file"] is not None:
            where = ("vm", i, "workload", "program_file")
            if workload["program"]:
                raise Bad(where, "set `program` or `program_file`, not both")
            path = Path(os.path.expanduser(workload["program_file"]))
            if not path.is_absolute():
                path = Path(base_dir) / path
            try:
                workload["program"] = load_program_file(path)
            except (OSError, ValueError) as e:
                raise Bad(where, f"{path}: {e}") from None
            workload["program_file"] = None
        try:
            compile_program(workload["program"])
        except ProgramError as e:
            raise Bad(("vm", i, "workload", "program") + e.path, e.message) from None
        if workload["program"] and vm["flavor"] != "tdx":
            raise Bad(("vm", i, "workload", "program"), "scripted guests are TDs (flavor tdx)")
        if workload["program"]:
            # the interrupt model's guest behaviours are statistical (tdsim.guest_irq): a
            # program states its calls itself
            intr, sept = vm["interrupts"], vm["sept"]
            for key, on in ((("workload", "timer_mode"), workload["timer_mode"] == "oneshot"),
                            (("interrupts", "ipi_hz"), intr["ipi_hz"] > 0),
                            (("interrupts", "hlt_irqs_off_p"), intr["hlt_irqs_off_p"] > 0),
                            (("sept", "private_fault_hz"), sept["private_fault_hz"] > 0)):
                if on:
                    raise Bad(("vm", i) + key, "not with a scripted guest (`program`): "
                               "write the calls in the program instead")


def _check_device_irq_vcpus(data: dict[str, Any]) -> None:
    """Device interrupts are routed to existing vCPUs; a guest halting with
    interrupts disabled has NMIs to wake it; device posting by the IOMMU is for TDs, without
    CPU hotplug."""
    for i, vm in enumerate(data["vm"]):
        if vm["interrupts"]["hlt_irqs_off_p"] > 0 and not vm["interrupts"]["nmi_hz"] > 0:
            raise Bad(("vm", i, "interrupts", "hlt_irqs_off_p"),
                       f"a vCPU halted with interrupts disabled wakes only on an NMI: set "
                       f"vm[{i}].interrupts.nmi_hz > 0")
        targets = vm["interrupts"]["device_irq_vcpus"]
        if vm["interrupts"]["device_irq_hz"] > 0 and not targets:
            raise Bad(("vm", i, "interrupts", "device_irq_vcpus"), "empty: route the device "
                       "interrupts to at least one vCPU")
        for j, v in enumerate(targets):
            if not 0 <= v < vm["vcpus"]:
                raise Bad(("vm", i, "interrupts", "device_irq_vcpus", j),
                           f"vCPU {v} does not exist (valid 0..{vm['vcpus'] - 1})")
        if vm["interrupts"]["device_posting"] == "vtd":
            if vm["flavor"] != "tdx":
                raise Bad(("vm", i, "interrupts", "device_posting"), "device posting by the "
                           "IOMMU is modelled for TDs only (flavor tdx)")
            if data["host"]["hotplug"]:
                raise Bad(("vm", i, "interrupts", "device_posting"), "not with "
                           "[[host.hotplug]]: a vCPU on an offline CPU's wake-up list is not "
                           "modelled")


def _check_schedule(data: dict[str, Any]) -> None:
    """A ``[schedule]`` places each event once (an entry and a landmark, or a time) on an
    existing vCPU of a VM that can take it, with a detail only where the kind has one; its
    guest lists name vCPUs with statistical workloads (docs/hunt.md)."""
    from tdsim.schedule import AT_SEAMCALL, CPU_KINDS, KINDS, LANDMARKS, detail_choices

    vcpus = {f"{vm['name']}.vcpu{i}": vm for vm in data["vm"] for i in range(vm["vcpus"])}
    names = list(vcpus)
    sched = data["schedule"]
    for j, e in enumerate(sched["event"]):
        where: PathT = ("schedule", "event", j)
        if e["kind"] is None:
            raise Bad(where, "needs a kind (" + ", ".join(KINDS) + ")")
        kind = KINDS[e["kind"]]
        if e["cpu"] is not None:
            if e["kind"] not in CPU_KINDS or e["vcpu"] is not None or e["t_ns"] is None:
                raise Bad(where + ("cpu",), "only host_irq and host_nmi at a t_ns may name "
                                            "a CPU, instead of a vcpu")
            if e["cpu"] >= data["host"]["cpus"]:
                raise Bad(where + ("cpu",), f"CPU {e['cpu']} does not exist: host.cpus = "
                                            f"{data['host']['cpus']}")
        if e["vcpu"] is None:
            if not (e["kind"] in CPU_KINDS and e["cpu"] is not None and e["t_ns"] is not None):
                raise Bad(where, f"needs a vcpu ({', '.join(names[:4])}...)" if len(names) > 4
                          else f"needs a vcpu ({', '.join(names)})")
        elif e["vcpu"] not in vcpus:
            raise Bad(where + ("vcpu",), f"no vCPU {e['vcpu']!r}" + _did_you_mean(
                e["vcpu"], names))
        elif kind.td_only and vcpus[e["vcpu"]]["flavor"] != "tdx":
            raise Bad(where + ("kind",), f"{e['kind']} needs a TD vCPU; "
                                         f"{e['vcpu']} is a VMX guest's")
        if (e["entry"] is None) == (e["t_ns"] is None):
            raise Bad(where, "give either entry (with at) or t_ns")
        if e["t_ns"] is not None:
            if e["at"] is not None or e["delay_ns"]:
                raise Bad(where + ("at",), "not with t_ns")
            if kind.where != "landmark":
                raise Bad(where + ("t_ns",), f"{e['kind']} is an outcome of an entry: place "
                                             f"it with entry")
        elif kind.where == "landmark":
            if e["at"] is None:
                raise Bad(where + ("at",), f"which landmark of the entry: "
                                           f"{', '.join(LANDMARKS)}")
        elif e["at"] is not None or e["delay_ns"]:
            what = "its TDH.VP.ENTER" if kind.where == AT_SEAMCALL else "its entry attempt"
            raise Bad(where + ("at",), f"{e['kind']} lands on {what}: no at or delay_ns")
        if e["detail"] is not None:
            choices = detail_choices(e["kind"], data["faults"])
            if not kind.details:
                raise Bad(where + ("detail",), f"{e['kind']} has no detail")
            if kind.details == "sw_errors" and e["detail"] not in choices:
                raise Bad(where + ("detail",), "one of " + ", ".join(f"{c:#x}"
                                                                    for c in choices))
    for name, items in sched["guest"].items():
        where = ("schedule", "guest", name)
        vm = vcpus.get(name)
        if vm is None:
            raise Bad(where, f"no vCPU {name!r}" + _did_you_mean(name, names))
        if vm["workload"]["program"]:
            raise Bad(where, "its VM runs a scripted guest (`program`)")
        calls = [i if isinstance(i, str) else i["call"] for i in items]
        if "hlt" in calls and not vm["workload"]["timer_hz"] > 0:
            raise Bad(where, "a halted vCPU could never be woken: its VM needs "
                             "workload.timer_hz > 0")
        if vm["flavor"] == "vmx" and "mapgpa" in calls:
            raise Bad(where, "a VMX guest has no MapGPA")


def _check_l2_statuses(data: dict[str, Any]) -> None:
    """The exit statuses ``[faults] error_exit`` injects exist only with TD partitioning:
    every TD must declare it (``td_partitioning``)."""
    if not data["faults"]["error_exit"] > 0:
        return
    for i, vm in enumerate(data["vm"]):
        if vm["flavor"] == "tdx" and not vm["td_partitioning"]:
            raise Bad(("faults", "error_exit"),
                      f"injects L2 exit statuses (TDX_TD_EXIT_BEFORE_L2_ENTRY), which only a "
                      f"TD with L2 VMs gets: set vm[{i}].td_partitioning = true")


def _check_warmup(data: dict[str, Any]) -> None:
    """The warm-up ends before the run does (else nothing would be measured)."""
    sim = data["sim"]
    if sim["warmup_us"] > 0 and sim["warmup_us"] >= sim["duration_us"]:
        raise Bad(("sim", "warmup_us"), f"must be less than sim.duration_us = "
                                        f"{sim['duration_us']:g} (got {sim['warmup_us']:g}): "
                                        f"the warm-up would leave nothing to measure")


def _check_expectations(data: dict[str, Any]) -> None:
    """``[expect]`` names only invariants and oracles the model checks, and metrics it
    declares (a misspelt name would silently count as 0)."""
    from tdsim.findings import NAMES
    from tdsim.metrics import family

    known = sorted(NAMES)
    expect = data["expect"]
    tables: list[tuple[PathT, dict[str, Any]]] = [(("expect",), expect)]
    tables += [(("expect", "strategy", name), t) for name, t in expect["strategy"].items()]
    for where, table in tables:
        for key in ("violations_must", "violations_must_not"):
            for j, name in enumerate(table[key]):
                if name not in known:
                    raise Bad(where + (key, j), f"unknown invariant {name!r}"
                                                + _did_you_mean(name, known))
        for name in table["metrics"]:
            if family(name) is None:
                raise Bad(where + ("metrics", name), f"unknown metric {name!r} "
                          "(names as in the result's `metrics`; `tdsim schema` and the "
                          "README list them)")
    scripted = [f"{vm['name']}.vcpu{i}" for vm in data["vm"] if vm["workload"]["program"]
                for i in range(vm["vcpus"])]
    for j, want in enumerate(expect["call"]):
        if want["vcpu"] not in scripted:
            raise Bad(("expect", "call", j, "vcpu"), f"{want['vcpu']!r} is not a scripted "
                      f"vCPU (scripted: {', '.join(scripted) or 'none'})")
    for j, want in enumerate(expect["msr"]):
        if want["index"] not in data["vmm"]["get_msrs"]:
            raise Bad(("expect", "msr", j, "index"), f"{want['index']:#x} is not read back: "
                      "list it in [vmm] get_msrs")


def _check_strategy_specs(data: dict[str, Any]) -> None:
    """Each strategy (``kvm.host_state``, every ``kvm.compare`` entry) is a built-in name,
    ``package.module:Class`` or ``path/file.py:Class``; compared strategies are distinct."""
    for where, spec in strategy_specs(data):
        target, _, cls = spec.rpartition(":")
        if spec in BUILTIN_STRATEGIES:
            continue
        is_file = target.endswith(".py") and len(target) > 3
        is_module = all(part.isidentifier() for part in target.split("."))
        if not (cls.isidentifier() and (is_file or is_module)):
            raise Bad(where, f"bad strategy {spec!r}: expected one of "
                             f"{', '.join(BUILTIN_STRATEGIES)}, "
                             f'"package.module:Class" or "path/file.py:Class"')
    seen: dict[str, int] = {}
    for j, spec in enumerate(data["kvm"]["compare"]):
        if spec in seen:
            raise Bad(("kvm", "compare", j), f"{spec!r} is listed twice (also "
                                             f"kvm.compare[{seen[spec]}])")
        seen[spec] = j


def strategy_specs(data: dict[str, Any]) -> list[tuple[PathT, str]]:
    """The strategies a scenario names, with their key paths."""
    kvm = data["kvm"]
    return [(("kvm", "host_state"), kvm["host_state"])] + [
        (("kvm", "compare", j), spec) for j, spec in enumerate(kvm["compare"])]


def resolve_strategies(data: dict[str, Any], base_dir: str | os.PathLike[str],
                       compare_dir: str | os.PathLike[str]) -> None:
    """Make each relative ``file.py:Class`` strategy absolute (``kvm.host_state`` against
    `base_dir`, ``kvm.compare`` entries against `compare_dir`), so a run works from any
    directory; then import each user strategy and instantiate it, so a strategy that cannot
    be used is bad input now rather than a crash when the run starts."""
    kvm = data["kvm"]
    kvm["host_state"] = _absolute(kvm["host_state"], base_dir)
    kvm["compare"] = [_absolute(spec, compare_dir) for spec in kvm["compare"]]
    for where, spec in strategy_specs(data):
        if spec in BUILTIN_STRATEGIES:
            continue
        from tdsim.strategies import StrategyError, load_strategy

        try:
            load_strategy(spec)
        except StrategyError as e:
            raise Bad(where, str(e)) from None


def _absolute(spec: str, base_dir: str | os.PathLike[str]) -> str:
    target, _, cls = spec.rpartition(":")
    if spec in BUILTIN_STRATEGIES or not target.endswith(".py"):
        return spec
    target = os.path.expanduser(target)
    if not os.path.isabs(target):
        target = os.path.join(base_dir, target)
    return f"{os.path.abspath(target)}:{cls}"


# Run in order on the resolved data; each raises Bad at the first problem.  Add new
# relations between keys here.
CROSS_CHECKS = [_check_vm_names, _check_pins, _check_hotplug, _check_mix,
                _check_strategy_specs, _check_device_irq_vcpus, _check_l2_statuses,
                _check_warmup, _check_expectations, _check_schedule]
