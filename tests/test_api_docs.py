"""docs/api.md agrees with the code: every documented name exists, has a docstring, and
takes the parameters the heading shows; its examples run."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
API = (ROOT / "docs" / "api.md").read_text()
HEADING = re.compile(r"^### `(tdsim(?:\.\w+)+)(?:\((.*)\))?`$", re.M)
DOCUMENTED = HEADING.findall(API)


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def shown(params: inspect.Signature) -> str:
    out = []
    for p in params.parameters.values():
        if p.name == "self":
            continue
        out.append(p.name if p.default is inspect.Parameter.empty
                   else f"{p.name}={p.default!r}")
    return ", ".join(out)


def test_the_api_is_documented():
    """The headings cover loading, running, the result and the strategy interface."""
    names = {name for name, _ in DOCUMENTED}
    for name in ("tdsim.scenario.load_scenario", "tdsim.sim.run", "tdsim.sim.Result",
                 "tdsim.sim.Result.to_dict", "tdsim.strategies.HostStateStrategy",
                 "tdsim.strategies.load_strategy", "tdsim.scenario.ScenarioError"):
        assert name in names


@pytest.mark.parametrize(("name", "params"), DOCUMENTED, ids=[n for n, _ in DOCUMENTED])
def test_documented_name_exists_with_docstring_and_signature(name, params):
    """The name exists, has a docstring, and its parameters are those of the heading."""
    obj = resolve(name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if params or (callable(obj) and not inspect.isclass(obj)):
        assert shown(inspect.signature(obj)) == params


def test_examples_run(monkeypatch):
    """Every python block of docs/api.md runs as written."""
    monkeypatch.chdir(ROOT)
    for body in re.findall(r"^```python\n(.*?)^```", API, re.S | re.M):
        exec(compile(body, "docs/api.md", "exec"), {})
