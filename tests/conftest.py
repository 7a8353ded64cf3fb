"""Shared test set-up: pure Python, and hypothesis profiles.

The suite always runs the model in pure Python, even with ``TDSIM_COMPILED=1`` in the
environment (removed here, before tdsim is imported, so the processes tests start run pure
too): several tests monkeypatch model methods, which compiled callers would not see.
tests/test_compiled.py runs the compiled build explicitly, in subprocesses.

``dev`` is fast for local runs; ``ci`` is derandomized (the same examples every run, so CI is
reproducible) and tries more of them.  Pick one with ``HYPOTHESIS_PROFILE``; the default is
``ci`` when the ``CI`` environment variable is set, else ``dev``.
"""

import os

_ASKED_COMPILED = os.environ.pop("TDSIM_COMPILED", "")

from hypothesis import settings  # noqa: E402  (after the environment is cleaned)

settings.register_profile("dev", max_examples=50, deadline=None)  # no timing in tests
settings.register_profile("ci", derandomize=True, max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_report_header() -> list[str]:
    """Say so when TDSIM_COMPILED was set and is ignored."""
    if _ASKED_COMPILED not in ("", "0"):
        return [f"tdsim: TDSIM_COMPILED={_ASKED_COMPILED} ignored: the suite runs pure Python "
                "(tests/test_compiled.py runs the compiled build)"]
    return []
