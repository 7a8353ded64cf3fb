"""The structured event log (tdsim.eventlog, ``tdsim run --log``)."""

import io
import json

from tdsim.cli import main
from tdsim.eventlog import write_event_log

EVENTS = [
    (500, "kvm_exit", 1, "td0.vcpu0", {"reason": "CPUID", "vp_enter_ret": "0x4d"}),
    (100, "kvm_entry", 1, "td0.vcpu0", {}),
    (700, "wrmsr", 2, "task0", {"msr": "MSR_LSTAR", "site": "user_return", "value": "0x1"}),
]


def test_json_lines_in_time_order_with_simulated_time():
    """One JSON object per event, sorted by simulated time, with its context and fields."""
    out = io.StringIO()
    assert write_event_log(EVENTS, out) == 3
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["kvm_entry", "kvm_exit", "wrmsr"]
    assert records[1] == {"event": "kvm_exit", "t_ns": 500, "timestamp": "0.500us", "cpu": 1,
                          "vcpu": "td0.vcpu0", "reason": "CPUID", "vp_enter_ret": "0x4d"}


def test_filters_by_kind_cpu_and_vcpu():
    """Kind, CPU and vCPU filters each keep only matching events."""
    for filt, kept in (({"kinds": ["wrmsr"]}, ["wrmsr"]),
                       ({"cpus": [1]}, ["kvm_entry", "kvm_exit"]),
                       ({"vcpus": ["task0"]}, ["wrmsr"]),
                       ({"kinds": ["kvm_exit"], "cpus": [2]}, [])):
        out = io.StringIO()
        write_event_log(EVENTS, out, **filt)
        assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == kept, filt


def test_console_form_is_one_readable_line_per_event():
    """The console renderer writes the simulated time first, then the kind."""
    out = io.StringIO()
    write_event_log(EVENTS[:1], out, console=True)
    line = out.getvalue().rstrip("\n")
    assert "\n" not in line
    assert line.startswith("0.500us kvm_exit")
    assert "reason=CPUID" in line


def test_cli_log_to_stdout_with_filters(tmp_path, capsys):
    """`--log - --log-kind kvm_exit --log-cpu 0` writes only those events to stdout (JSON
    when not a terminal) and the summary to stderr."""
    from pathlib import Path

    baseline = Path(__file__).parent.parent / "scenarios" / "baseline.toml"
    assert main(["run", str(baseline), "--log", "-", "--log-kind", "kvm_exit",
                 "--log-cpu", "0"]) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert records
    assert {(r["event"], r["cpu"]) for r in records} == {("kvm_exit", 0)}
    assert "TD exits" in captured.err


def test_cli_rejects_unknown_kind(capsys):
    """An unknown --log-kind is bad input (exit status 2, one line)."""
    from pathlib import Path

    baseline = Path(__file__).parent.parent / "scenarios" / "baseline.toml"
    assert main(["run", str(baseline), "--log", "-", "--log-kind", "kvm_exits"]) == 2
    assert "unknown event kind(s) kvm_exits" in capsys.readouterr().err
