"""A study process killed outright (SIGKILL) loses no finished run, leaves no orphaned worker,
and resumes with every stored run reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

STUDY = """
question = "Does a killed study resume?"
scenario = "{scenario}"
strategies = ["current", "eager"]
metrics = ["exits"]
[factors]
"host.cpus" = [2, 4]
[overrides]
"sim.duration_us" = 3000
[replications]
count = 300
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text(
    ).split(")")[1].split()[0]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkilled_study_resumes_reusing_every_stored_run(tmp_path):
    """SIGKILL mid-study: workers exit, the store keeps complete rows, --resume reuses them."""
    study = tmp_path / "kill.toml"
    study.write_text(STUDY.format(scenario=ROOT / "studies" / "base" / "one_td.toml"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tdsim.study", str(study), "--jobs", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    store = out / "results.jsonl"
    deadline = time.monotonic() + 60
    while not (store.exists() and store.read_text().count("\n") >= 100):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    children = [int(c) for c in
                Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    deadline = time.monotonic() + 5
    while any(_alive(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(c) for c in children), "orphaned workers kept running"

    stored = {(json.dumps(r["point"]), r["strategy"], r["replication"])
              for line in store.read_text().splitlines() if line.endswith("}")
              for r in [json.loads(line)]}
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{len(stored)} reused" in done.stdout
    assert "1200 runs" in done.stdout
