"""Shared test set-up: hypothesis profiles.

``dev`` is fast for local runs; ``ci`` is derandomized (the same examples every run, so CI is
reproducible) and tries more of them.  Pick one with ``HYPOTHESIS_PROFILE``; the default is
``ci`` when the ``CI`` environment variable is set, else ``dev``.
"""

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50, deadline=None)  # no timing in tests
settings.register_profile("ci", derandomize=True, max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
