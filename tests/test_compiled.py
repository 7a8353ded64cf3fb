"""The optional compiled build (make compiled, docs/performance.md): the guard that refuses a
missing or stale build, and compiled runs giving what pure Python runs give.

The rest of the suite runs pure Python (conftest.py); the runs here are subprocesses, one pure
and one compiled per comparison.  The comparisons need a fresh build in build/compiled/ and
skip, saying why, without one (`make test` never builds it).  The tests marked ``compiled``
(``make test-compiled``, which runs `make compiled` first) are the slow ones: every shipped
scenario through ``tdsim --compiled check``, and a build from scratch into a temporary
directory (a minute or two: mypyc and a C compiler).
"""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tdsim import _compiled

ROOT = Path(__file__).resolve().parent.parent

# Small shipped scenarios that between them run late aborts, SEPT zaps, request processing,
# interrupts, host-state restores, TDVMCALLs of scripted guests and TDX-module outcomes
# and, shortened (@duration_us), TDs and VMX guests sharing CPUs
# (test_compiled_cli_checks_every_shipped_scenario runs every shipped one in full).
SCENARIOS = [f"scenarios/{name}" for name in (
    "baseline.toml", "aborts_sept_zap.toml", "aborts_request_processing.toml",
    "irq_hlt_nmi_ipi.toml", "host_xstate_restores.toml", "selftest_mmio.toml",
    "tdx_module_outcomes.toml", "mixed_td_vmx.toml@20000")]

# One subprocess: each scenario run traced, with what a comparison needs.
WORKER = """
import json, sys
from tdsim import load_scenario
from tdsim.expect import digest, trajectory
from tdsim.sim import run
from tdsim.trace import Tracer

variants = [v for v in sys.argv[1].split(",") if v]
out = {}
for spec in sys.argv[2:]:  # path, or path@duration_us for a shorter run
    path, _, duration = spec.partition("@")
    scenario = load_scenario(path, {"sim.duration_us": int(duration)} if duration else None)
    tracer = Tracer()
    result = run(scenario, tracer=tracer, variants=variants)
    lines = trajectory(tracer.events)
    out[spec] = {"metrics": result.metrics, "violations": result.violations,
                 "events": len(lines), "sha256": digest(lines),
                 "compiled": result.perf["compiled"]}
print(json.dumps(out))
"""


def _env(compiled: bool, build: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env[_compiled.ENV_VAR] = "1" if compiled else "0"
    env.pop(_compiled.DIR_VAR, None)
    if build is not None:
        env[_compiled.DIR_VAR] = str(build)
    env.update(extra)
    return env


def _runs(compiled: bool, paths: list[str], build: Path | None = None,
          variants: str = "") -> dict[str, dict[str, object]]:
    done = subprocess.run([sys.executable, "-c", WORKER, variants, *paths],
                          env=_env(compiled, build), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    runs: dict[str, dict[str, object]] = json.loads(done.stdout)
    assert all(r["compiled"] is compiled for r in runs.values())
    return runs


def _fresh_build() -> Path:
    """build/compiled/ if it is fresh for these sources, else skip saying why."""
    try:
        _compiled.check(_compiled.DEFAULT_BUILD_DIR)
    except _compiled.CompiledBuildError as e:
        pytest.skip(f"needs a fresh compiled build (make compiled): {e}")
    return _compiled.DEFAULT_BUILD_DIR


def _assert_same(build: Path, paths: list[str], variants: str = "") -> None:
    pure = _runs(False, paths, variants=variants)
    compiled = _runs(True, paths, build, variants=variants)
    for path in paths:
        p, c = pure[path], compiled[path]
        assert c["metrics"] == p["metrics"], path
        assert c["violations"] == p["violations"], path
        assert (c["events"], c["sha256"]) == (p["events"], p["sha256"]), path


# --- compiled runs are pure runs --------------------------------------------------------------


def test_compiled_runs_match_pure_runs() -> None:
    build = _fresh_build()
    _assert_same(build, SCENARIOS)


def test_compiled_runs_a_data_variant_and_refuses_a_method_variant() -> None:
    """A variant that replaces data (the vendor table, a flag) runs compiled and finds what
    pure Python finds; one that replaces a method is refused (compiled callers would not see
    the replacement)."""
    build = _fresh_build()
    _assert_same(build, ["scenarios/host_xstate_restores.toml"], variants="stale_debugctl")
    done = subprocess.run([sys.executable, "-c", WORKER, "lost_wakeup",
                           "scenarios/baseline.toml"], env=_env(True, build), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode != 0
    assert "model variant 'lost_wakeup' replaces methods" in done.stderr


@pytest.mark.compiled
def test_compiled_cli_checks_every_shipped_scenario() -> None:
    """``tdsim --compiled check``: every shipped scenario meets its [expect] tables and its
    stored fingerprint (pure runs stored them).  Some 20 s of CPU: marked ``compiled``."""
    build = _fresh_build()
    paths = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scenarios").glob("*.toml"))
    done = subprocess.run([sys.executable, "-m", "tdsim", "--compiled", "check", *paths],
                          env=_env(False, build), cwd=ROOT, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("fingerprint matches") == len(paths)


@pytest.mark.compiled
def test_build_from_scratch_and_compare(tmp_path: Path) -> None:
    """tools/build_compiled.py builds a fresh build (here into a temporary directory) that
    the guard accepts and that runs what pure Python runs."""
    pytest.importorskip("mypyc", reason="mypyc is not installed (pip install -e '.[compiled]')")
    build = tmp_path / "compiled"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "build_compiled.py"), "--out",
                           str(build)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _compiled.check(build) == sorted(json.loads(
        (build / "manifest.json").read_text())["modules"])
    _assert_same(build, ["scenarios/baseline.toml", "scenarios/exit_reason_raw.toml"])


def test_performance_doc_lists_what_is_compiled() -> None:
    """docs/performance.md's table of compiled modules is tools/build_compiled.py's MODULES,
    and every one of them is a module of tdsim."""
    tree = ast.parse((ROOT / "tools" / "build_compiled.py").read_text())
    modules = next(ast.literal_eval(node.value) for node in tree.body
                   if isinstance(node, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets))
    doc = (ROOT / "docs" / "performance.md").read_text()
    table = doc[doc.index("| group | modules |"):doc.index("Everything else stays Python")]
    listed = re.findall(r"`(\w+)`", table)
    assert sorted(listed) == sorted(modules)
    assert all((ROOT / "tdsim" / f"{m}.py").exists() for m in modules)


# --- the guard --------------------------------------------------------------------------------


def _fake_build(where: Path, **changes: object) -> Path:
    """A build directory with a manifest that matches the sources (and no compiled code):
    what the guard checks, then `changes` applied to the manifest."""
    modules = {m: _compiled.source_hash(_compiled.PACKAGE / f"{m}.py")
               for m in ("host", "segment", "kvm_tdx")}
    manifest: dict[str, object] = {"format": _compiled.MANIFEST_FORMAT,
                                   "python": _compiled.python_tag(), "mypy": "test",
                                   "library": "_native__mypyc", "modules": modules}
    manifest.update(changes)
    (where / "tdsim").mkdir(parents=True, exist_ok=True)
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


def _refused(build: Path, argv: list[str], env_compiled: bool = False) -> str:
    """Run `argv` (after ``python``) against `build`: it must exit 2 with one line on stderr
    and nothing on stdout; returns that line."""
    done = subprocess.run([sys.executable, *argv], env=_env(env_compiled, build), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_guard_accepts_a_matching_manifest(tmp_path: Path) -> None:
    assert _compiled.check(_fake_build(tmp_path)) == ["host", "kvm_tdx", "segment"]


@pytest.mark.parametrize("how", ["cli", "env"])
def test_guard_refuses_a_stale_build(tmp_path: Path, how: str) -> None:
    """An edit of a compiled module's source since the build (here: its hash in the manifest
    tampered with) is refused, with ``tdsim --compiled`` and with TDSIM_COMPILED=1."""
    fresh = _fake_build(tmp_path / "fresh")
    modules = json.loads((fresh / "manifest.json").read_text())["modules"]
    stale = _fake_build(tmp_path / "stale", modules={**modules, "segment": "0" * 64})
    argv = ["-m", "tdsim", "run", "scenarios/baseline.toml"]
    if how == "cli":
        line = _refused(stale, ["-m", "tdsim", "--compiled", *argv[2:]])
    else:
        line = _refused(stale, argv, env_compiled=True)
    assert line == ("tdsim: error: the compiled build is stale: tdsim/segment.py changed "
                    "since it was built; rebuild with `make compiled`")


def test_guard_refuses_an_import_with_a_stale_build(tmp_path: Path) -> None:
    """TDSIM_COMPILED=1 is honoured by ``import tdsim`` itself (library use, study workers)."""
    stale = _fake_build(tmp_path, modules={"host": "0" * 64})
    line = _refused(stale, ["-c", "import tdsim"], env_compiled=True)
    assert line.startswith("tdsim: error: the compiled build is stale: tdsim/host.py changed")


@pytest.mark.parametrize(("changes", "expected"), [
    ({"modules": {"no_such_module": "0" * 64}}, "tdsim/no_such_module.py no longer exists"),
    ({"python": {"version": "3.0.0", "cache_tag": "cpython-30", "ext_suffix": ".so"}},
     "the compiled build is for Python 3.0.0 (cpython-30)"),
    ({"format": 0}, "has format 0, not 1"),
])
def test_guard_refuses_a_build_that_does_not_fit(tmp_path: Path, changes: dict[str, object],
                                                 expected: str) -> None:
    line = _refused(_fake_build(tmp_path, **changes),
                    ["-m", "tdsim", "--compiled", "run", "scenarios/baseline.toml"])
    assert line.startswith("tdsim: error: ")
    assert expected in line


def test_guard_refuses_an_extension_the_manifest_does_not_list(tmp_path: Path) -> None:
    build = _fake_build(tmp_path)
    suffix = _compiled.python_tag()["ext_suffix"]
    (build / "tdsim" / f"vmm{suffix}").write_bytes(b"")
    line = _refused(build, ["-m", "tdsim", "--compiled", "run", "scenarios/baseline.toml"])
    assert "is not in its manifest" in line


def test_guard_refuses_a_missing_build_and_an_unclear_request(tmp_path: Path) -> None:
    line = _refused(tmp_path / "nothing", ["-m", "tdsim", "--compiled", "run",
                                           "scenarios/baseline.toml"])
    assert line.startswith("tdsim: error: no compiled build (")
    assert line.endswith("build it with `make compiled`")
    done = subprocess.run([sys.executable, "-c", "import tdsim"],
                          env=_env(False, tmp_path, **{_compiled.ENV_VAR: "yes"}), cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr == ("tdsim: error: TDSIM_COMPILED='yes': use 1 (compiled build) or 0 "
                           "(pure Python)\n")


def test_pure_python_unless_asked(tmp_path: Path) -> None:
    """Without TDSIM_COMPILED / --compiled nothing is checked or used, even a stale build."""
    stale = _fake_build(tmp_path, modules={"host": "0" * 64})
    done = subprocess.run([sys.executable, "-c", "import tdsim._compiled as c, tdsim.host; "
                           "print(c.ACTIVE, tdsim.host.__file__.endswith('.py'))"],
                          env=_env(False, stale), cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.stdout.split() == ["False", "True"], done.stderr
