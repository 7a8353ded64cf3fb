"""Helpers for tests that run scripted guests (one small TD, no host tick)."""

from __future__ import annotations

from typing import Any

from tdsim import arch
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Result, run

SHARED = 1 << 47
U64 = (1 << 64) - 1
SUCCESS = arch.TDVMCALL_STATUS_SUCCESS
RETRY = arch.TDVMCALL_STATUS_RETRY
INVALID = arch.TDVMCALL_STATUS_INVALID_OPERAND
ALIGN = arch.TDVMCALL_STATUS_ALIGN_ERROR
UNSUPPORTED = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
# KVM_CAP_X86_USER_SPACE_MSR exit reasons (msr.reason)
REASON_INVAL, REASON_UNKNOWN, REASON_FILTER = 1, 2, 4


def neg(errno: int) -> int:
    """-errno as the guest's 64-bit register."""
    return -errno & U64


def scenario(program: list[Any], vmm: dict[str, Any] | None = None,
             kvm: dict[str, Any] | None = None, vcpus: int = 1, duration_us: int = 3000,
             timer_hz: float = 0, interrupts: dict[str, Any] | None = None,
             faults: dict[str, Any] | None = None) -> Any:
    """A scripted TD of `vcpus` pinned vCPUs (CPUs 1..) on a host without a tick."""
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": vcpus + 1, "tick_hz": 0},
        "kvm": kvm or {},
        "vmm": vmm or {},
        "faults": faults or {},
        "vm": [{"vcpus": vcpus, "pin": list(range(1, vcpus + 1)),
                "interrupts": interrupts or {},
                "workload": {"program": program, "timer_hz": timer_hz}}],
    }, name="<scripted>")


def run_program(program: list[Any], **kw: Any) -> tuple[Result, list[dict[str, Any]]]:
    """Run the program; (the result, the call records of td0.vcpu0)."""
    result = run(scenario(program, **kw))
    return result, result.details["calls"]["td0.vcpu0"]


def call(step: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The record of a program of one call."""
    _, calls = run_program([step], **kw)
    assert len(calls) == 1, calls
    return calls[0]


def tdvmcall(leaf: str | int, r12: int = 0, r13: int = 0, r14: int = 0, r15: int = 0,
             **extra: Any) -> dict[str, Any]:
    return {"op": "tdvmcall", "r11": leaf, "r12": r12, "r13": r13, "r14": r14, "r15": r15,
            **extra}


def out(rec: dict[str, Any]) -> tuple[int, int]:
    """(R10, R11) the guest got back."""
    o = rec["regs_out"]
    return o["r10"], o["r11"]


def rdmsr(index: int, **extra: Any) -> dict[str, Any]:
    return {"op": "rdmsr", "index": index, **extra}


def wrmsr(index: int, value: int, **extra: Any) -> dict[str, Any]:
    return {"op": "wrmsr", "index": index, "value": value, **extra}
