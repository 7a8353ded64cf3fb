"""Student's t in plain Python agrees with SciPy."""

from __future__ import annotations

import pytest

from tdsim.study.tdist import t_cdf, t_ppf

scipy_stats = pytest.importorskip("scipy.stats")

DOFS = [1, 2, 3, 4, 5, 9, 10, 19, 29, 49, 99, 199, 1000, 100000]


@pytest.mark.parametrize("dof", DOFS)
def test_quantile_matches_scipy(dof):
    """Two-sided critical values and tails at every dof a study uses, to 1e-8."""
    for p in (0.5001, 0.6, 0.9, 0.95, 0.975, 0.98333, 0.995, 0.9995, 0.01):
        assert t_ppf(p, dof) == pytest.approx(scipy_stats.t.ppf(p, dof), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("dof", DOFS)
def test_cdf_matches_scipy(dof):
    """The CDF, both tails and the centre, to 1e-10."""
    for t in (-40.0, -3.0, -0.2, 0.0, 0.7, 2.5, 12.0):
        assert t_cdf(t, dof) == pytest.approx(scipy_stats.t.cdf(t, dof), abs=1e-10)


def test_quantile_inverts_the_cdf():
    """cdf(ppf(p)) = p."""
    for dof in (3, 17):
        for p in (0.1, 0.8, 0.999):
            assert t_cdf(t_ppf(p, dof), dof) == pytest.approx(p, abs=1e-12)
