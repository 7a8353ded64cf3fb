"""What a hunt hands back (`tdsim.hunt`): the reproducer as an ordinary scenario file, the
paragraph that explains its violation, and the coverage reached.

The reproducer is the shrunk candidate's scripted scenario with every key left at its schema
default left out, an ``[expect]`` table naming the oracle (so ``tdsim check`` guards it and it
can go into ``scenarios/`` as a regression test), and a header saying where it came from.  It
is verified before it is handed back: loaded from its own text and run as ``tdsim run`` runs
it, it must record the violation.
"""

from __future__ import annotations

import copy
import math
import textwrap
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .choices import HOOKS, NO_HOOK, POSITIONS
from .scenario import load_scenario_text, scenario_from_dict
from .schedule import AT_ATTEMPT, AT_SEAMCALL, KINDS, Event, detail_choices

if TYPE_CHECKING:
    from .hunt_space import Candidate, HuntResult, Space
    from .trace import Event as TraceEvent

_INLINE_ARRAYS = ("event",)  # arrays of tables written inline, one item per line


# --- the reproducer ------------------------------------------------------------------------
def reproducer(space: Space, cand: Candidate, hit: dict[str, Any],
               result: HuntResult) -> dict[str, Any] | None:
    """The scenario data of the reproducer of `cand`, whose run breaks ``hit``'s oracle.
    Its duration ends just after the violation (at the candidate's end if an end-of-run
    check found it), in whole microseconds where that still reproduces it.  None if no run
    of its own breaks the oracle (a finding of the instant a search run was cut short)."""
    oracle = hit["invariant"]
    events = [_explicit(e, space) for e in cand.events]
    tries = [math.ceil((hit["t_ns"] + 1) / 1000), (hit["t_ns"] + 1) / 1000, space.horizon_us]
    for duration in tries:
        data = copy.deepcopy(space.data_of(replace(cand, events=tuple(events)), duration))
        _compact_guests(data)
        _unused_to_defaults(data, {e.kind for e in events})
        found = _violations(data, result.variants)
        if oracle in found:
            # the oracle first, then whatever else the run records (`tdsim check` fails on
            # a violation the scenario does not declare)
            data["expect"] = {"violations_must": [oracle] + sorted(found - {oracle})}
            out = minimal(data)
            schedule: dict[str, Any] = {}
            if events:
                schedule["event"] = [e.to_data() for e in events]
            if data["schedule"]["guest"]:
                schedule["guest"] = data["schedule"]["guest"]
            out.pop("schedule", None)
            if schedule:  # (before [expect], as in the schema)
                expect = out.pop("expect")
                out["schedule"] = schedule
                out["expect"] = expect
            return out
    if hit.get("at_end"):
        return None
    raise AssertionError(f"tdsim bug: the shrunk counterexample does not break {oracle} "
                         "when run on its own")


def _explicit(e: Event, space: Space) -> Event:
    """`e` with its detail written out (the first of the scenario's list by default), so
    that the reproducer does not depend on the list."""
    if e.detail is None:
        choices = detail_choices(e.kind, space.faults)
        if choices:
            return replace(e, detail=choices[0])
    return e


def _unused_to_defaults(data: dict[str, Any], kinds: set[str]) -> None:
    """Parameters of sources the reproducer does not use back at their defaults (the host
    tasks' run and sleep times serve preempt and migrate; sept_zap_us serves sept_zap)."""
    defaults = scenario_from_dict({}, name="<defaults>").data
    for key in ("operand_busy_ids", "error_exit_low_bits"):
        data["faults"][key] = defaults["faults"][key]
    if "sept_zap" not in kinds:
        data["faults"]["sept_zap_us"] = defaults["faults"]["sept_zap_us"]
    if not kinds & {"preempt", "migrate"}:
        for key in ("task_run_us", "task_sleep_us", "task_dist"):
            data["host"][key] = defaults["host"][key]


def _violations(data: dict[str, Any], variants: tuple[str, ...]) -> set[str]:
    """The invariants a run of the scenario `data` violates."""
    from .sim import run

    scenario = scenario_from_dict(data, name="<reproducer>")
    return {v["invariant"] for v in run(scenario, variants=variants).violations}


def _compact_guests(data: dict[str, Any]) -> dict[str, Any]:
    """A VM whose scheduled guests all make one call with the workload's compute time gets
    that call as its mix instead of per-vCPU lists; a VM whose every vCPU has a list gets
    the calls of its lists as its mix (the mix is then not drawn from)."""
    guest = data["schedule"]["guest"]
    for vm in data["vm"]:
        names = [f"{vm['name']}.vcpu{i}" for i in range(vm["vcpus"])]
        lists = [guest.get(n) or [] for n in names]
        if not all(lists):
            continue
        if all(items == [lists[0][0]] for items in lists) and isinstance(lists[0][0], str):
            vm["workload"]["mix"] = {lists[0][0]: 1.0}
            for n in names:
                del guest[n]
            continue
        used = {i if isinstance(i, str) else i["call"] for items in lists for i in items}
        vm["workload"]["mix"] = {k: 1.0 for k in vm["workload"]["mix"] if k in used}
    return data


def minimal(data: dict[str, Any]) -> dict[str, Any]:
    """`data` (resolved) without the keys at their schema defaults."""
    defaults = scenario_from_dict({"vm": [{} for _ in data["vm"]]}, name="<defaults>").data
    out: dict[str, Any] = _diff(data, defaults)
    out.setdefault("sim", {})["seed"] = data["sim"]["seed"]
    out.setdefault("kvm", {})["host_state"] = data["kvm"]["host_state"]
    return out


def _diff(value: Any, default: Any) -> Any:
    if isinstance(value, dict) and isinstance(default, dict):
        out = {}
        for k, v in value.items():
            if v is None or (k in default and v == default[k]):
                continue
            d = _diff(v, default.get(k))
            if d != {}:
                out[k] = d
        return out
    if (isinstance(value, list) and isinstance(default, list) and value
            and all(isinstance(v, dict) for v in value) and default
            and isinstance(default[0], dict)):
        out_list = [_diff(v, d) for v, d in zip(value, default, strict=False)]
        return out_list + value[len(default):]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [{k: x for k, x in v.items() if x is not None} for v in value]
    return value


def header(result: HuntResult, command: str) -> str:
    """The comment block at the top of a reproducer: the question and its answer."""
    n = len(result.candidate.events) if result.candidate else 0
    events = (f"these {n} injected events" if n > 1 else "this injected event" if n
              else "no injected event")
    text = [f"Question: under kvm.host_state = \"{result.strategy}\", which sequence of "
            f"events breaks {result.oracle}?",
            f"Answer (found by `{command}`, tdsim {__version__}, in {result.runs:,} runs): "
            f"{events} and nothing else.  `tdsim run` this file to see it happen, "
            "`tdsim check` it to guard the finding.",
            result.explanation]
    lines = []
    for i, para in enumerate(text):
        if i:
            lines.append("")
        lines += textwrap.wrap(para, 94, break_long_words=False, break_on_hyphens=False)
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def dumps(data: dict[str, Any]) -> str:
    """`data` as TOML (the few types a scenario holds)."""
    out: list[str] = []
    _table(data, (), out)
    return "\n".join(out).lstrip("\n") + "\n"


def _table(table: dict[str, Any], path: tuple[str, ...], out: list[str]) -> None:
    subs = []
    plain = []
    for k, v in table.items():
        if _is_table(path, k, v):
            subs.append((k, v))
        else:
            plain.append((k, v))
    if plain and path:
        out.append("")
        out.append(f"[{'.'.join(_key(p) for p in path)}]")
    for k, v in plain:
        out.append(f"{_key(k)} = {_value(v, multiline=k in _INLINE_ARRAYS)}")
    for k, v in subs:
        if isinstance(v, list):
            for item in v:
                out.append("")
                out.append(f"[[{'.'.join(_key(p) for p in (*path, k))}]]")
                _items_then_tables(item, (*path, k), out)
        else:
            _table(v, (*path, k), out)


def _is_table(path: tuple[str, ...], k: str, v: Any) -> bool:
    """Whether `v` is written as a [table] / [[array of tables]] rather than inline."""
    if isinstance(v, dict):
        return bool(v) and not _inline_dict(path, k)
    return (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
            and k not in _INLINE_ARRAYS)


def _items_then_tables(item: dict[str, Any], path: tuple[str, ...], out: list[str]) -> None:
    for k, v in item.items():
        if not isinstance(v, dict):
            out.append(f"{_key(k)} = {_value(v)}")
    for k, v in item.items():
        if isinstance(v, dict) and v:
            if _inline_dict(path, k):
                continue
            _table(v, (*path, k), out)
    for k, v in item.items():
        if isinstance(v, dict) and v and _inline_dict(path, k):
            out.append(f"{_key(k)} = {_value(v)}")


def _inline_dict(path: tuple[str, ...], key: str) -> bool:
    return key == "mix"


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else f'"{k}"'


def _value(v: Any, multiline: bool = False) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        if multiline and v:
            return "[\n" + "".join(f"  {_value(x)},\n" for x in v) + "]"
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):  # (an operand id or a status reads best in hex)
        return "{ " + ", ".join(f"{_key(k)} = " + (f"{x:#x}" if k == "detail" else _value(x))
                                for k, x in v.items()) + " }"
    return str(v)


def reproducer_text(result: HuntResult, command: str) -> str:
    """The reproducer file: header and scenario."""
    assert result.reproducer is not None
    return header(result, command) + "\n" + dumps(result.reproducer)


# --- the explanation -------------------------------------------------------------------------
def explain_violation(result: HuntResult) -> tuple[dict[str, Any], str]:
    """Run the reproducer from its own text, traced: its first violation of the oracle and a
    paragraph saying what led to it."""
    from .sim import run
    from .trace import Tracer

    assert result.reproducer is not None
    scenario = load_scenario_text(dumps(result.reproducer), name="<reproducer>")
    tracer = Tracer()
    r = run(scenario, tracer=tracer, variants=result.variants)
    v = next((v for v in r.violations if v["invariant"] == result.oracle), None)
    if v is None:
        raise AssertionError(f"tdsim bug: the reproducer's text does not break "
                             f"{result.oracle}:\n{dumps(result.reproducer)}")
    return v, paragraph(result, v, tracer.sorted_events())


def paragraph(result: HuntResult, v: dict[str, Any], events: list[TraceEvent]) -> str:
    """One paragraph: the set-up, the injected events in order (with where they landed and
    what TDH.VP.ENTER returned), what followed, and the violation."""
    data = result.reproducer or {}
    n_vcpus = sum(vm.get("vcpus", 1) for vm in data.get("vm", []))
    parts = []
    last = -1
    said: set[int] = set()  # events an outcome's words already cover
    for i, (t, kind, _cpu, vcpu, f) in enumerate(events):
        if t > v["t_ns"]:
            break
        if kind != "inject":
            continue
        last = i
        what = f["what"]
        if KINDS[what].where == AT_SEAMCALL:
            after = [j for j in range(i + 1, len(events)) if events[j][3] == vcpu
                     and events[j][1] in ("seamcall", "late_abort", "kvm_exit")][:3]
            said.update(after)
            status = next((events[j][4]["status"] for j in after
                           if events[j][1] == "seamcall"), "?")
            ret = next((events[j][4]["vp_enter_ret"] for j in after
                        if events[j][1] == "kvm_exit"), "?")
            parts.append(f"TDH.VP.ENTER of {vcpu}'s entry {f['entry']} returns {status} "
                         f"({what}, vp_enter_ret {ret})")
        elif KINDS[what].where == AT_ATTEMPT:
            parts.append(f"kvm_mmu_reload fails at {vcpu}'s entry attempt {f['entry']}")
        else:
            placed = (f"at t = {t / 1000:g} us" if f["entry"] < 0
                      else f"at the {_LANDMARK_WORDS[f['at']]} of entry {f['entry']}")
            landed = ("" if f["landed"] == f["at"] else
                      f" (the vCPU is then {_POSITION_WORDS.get(f['landed'], f['landed'])})")
            parts.append(f"a {what.replace('_', ' ')} reaches {vcpu} {placed}{landed}")
    follow = _what_followed([e for j, e in enumerate(events) if j > last and j not in said],
                            v)
    strategy = result.strategy.rpartition(":")[2] or result.strategy
    setup = (f"Under {strategy}, with {n_vcpus} vCPU{'s' if n_vcpus != 1 else ''} and "
             f"nothing else happening")
    story = "; ".join(parts) + (f"; then {', '.join(follow)}" if parts and follow else
                                ", ".join(follow))
    return (f"{setup}: {story}; at {v['t_ns'] / 1000:g} us on cpu{v['cpu']} "
            f"{v['invariant']} breaks: {v['detail']}.")


_LANDMARK_WORDS = {"before_check": "last instant before the late check",
                   "after_check": "late check", "in_guest": "middle of the guest's run",
                   "exit": "exit"}
_POSITION_WORDS = {"before_check": "before the late check of an entry",
                   "after_check": "past the late check", "in_guest": "in the guest",
                   "exit": "handling an exit", "kvm": "in KVM between entries",
                   "vmm": "in the VMM", "halted": "halted", "runnable": "waiting for a CPU",
                   "stopped": "stopped"}


def _what_followed(events: list[TraceEvent], v: dict[str, Any], most: int = 8) -> list[str]:
    """The notable events after the last injection, on the violation's CPU, in words."""
    out: list[str] = []
    for t, kind, cpu, who, f in events:
        if t > v["t_ns"] or (v["cpu"] >= 0 and cpu != v["cpu"]):
            continue
        if kind == "late_abort":
            text = f"{who}'s entry aborts ({f['abort']})"
        elif kind == "vcpu_put":
            text = f"vcpu_put of {who} ({f['cause']})"
        elif kind == "vcpu_load":
            text = f"vcpu_load of {who}"
        elif kind == "userspace_exit":
            text = f"KVM_RUN returns to the VMM ({f['reason']})"
        elif kind == "kvm_exit":
            text = f"a TD exit ({f['reason']})"
        elif kind == "sched_switch" and f["next"] is not None:
            text = f"{f['next']} runs on cpu{cpu}"
        elif kind == "seamcall" and f["leaf"] == "TDH_VP_ENTER":
            text = f"TDH.VP.ENTER returns {f['status']}"
        else:
            continue
        if not out or out[-1] != text:
            out.append(text)
    return out[-most:]


# --- coverage ---------------------------------------------------------------------------------
_HOOK_LETTER = {"prepare_switch_to_guest": "G", "vcpu_enter_exit": "E",
                "prepare_switch_to_host": "H", "user_return": "U", NO_HOOK: "-"}


def coverage_lines(result: HuntResult) -> list[str]:
    """The coverage reached: per event kind and where it landed, the strategy hooks that ran
    next (G prepare_switch_to_guest, E vcpu_enter_exit, H prepare_switch_to_host, U
    user_return, - none)."""
    cells = result.cells
    if not result.kinds:
        return ["coverage: the scenario switches on no kind of injected event (no [faults] "
                "knob, interrupt source, host task or SEPT zap): only guest calls were "
                "searched"]
    where = [p for p in (AT_SEAMCALL, AT_ATTEMPT, *POSITIONS)
             if any(c[1] == p for c in cells)]
    possible = sum(len(_where_possible(k)) for k in result.kinds) * (len(HOOKS) + 1)
    lines = [f"coverage: {len(cells)} combinations of event kind x where it landed x next "
             f"strategy hook (of at most {possible}); hooks: G prepare_switch_to_guest, "
             "E vcpu_enter_exit, H prepare_switch_to_host, U user_return, - none"]
    width = max(len(k) for k in result.kinds)
    lines.append(" " * (width + 2) + "  ".join(f"{w:<12}" for w in where).rstrip())
    for k in result.kinds:
        row = []
        for w in where:
            hooks = sorted({_HOOK_LETTER[c[2]] for c in cells if c[0] == k and c[1] == w},
                           key="GEHU-".index)
            row.append(f"{''.join(hooks) or '.':<12}")
        lines.append(f"{k:<{width}}  " + "  ".join(row).rstrip())
    if result.space_total:
        share = result.space_done / result.space_total
        lines.append(f"exhaustive: {result.space_done:,} of {result.space_total:,} schedules "
                     f"tried ({share:.1%})")
    return lines


def _where_possible(kind: str) -> tuple[str, ...]:
    where = KINDS[kind].where
    return POSITIONS if where == "landmark" else (where,)
