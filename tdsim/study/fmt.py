"""Numbers as a report shows them: rounded to what their interval says is known."""

from __future__ import annotations

import math

from tdsim.study.stats import Estimate, Ratio

MINUS = "\u2212"


def decimals(halfwidth: float, value: float = 0.0) -> int:
    """Decimals that show the half-width to two significant digits (at most 6; negative:
    round to tens, hundreds, ...)."""
    if halfwidth > 0 and math.isfinite(halfwidth):
        return min(6, 1 - math.floor(math.log10(halfwidth)))
    if value and math.isfinite(value):
        return min(6, 3 - math.floor(math.log10(abs(value))))
    return 0


def num(x: float, d: int, *, sign: bool = False) -> str:
    """`x` with `d` decimals, thousands separated, a real minus sign."""
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return ("+" if sign and x > 0 else "") + ("∞" if x > 0 else f"{MINUS}∞")
    x = round(x, d) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
    d = max(0, d)
    text = f"{x:+,.{d}f}" if sign else f"{x:,.{d}f}"
    return text.replace("-", MINUS)


def exact(x: float, *, sign: bool = False) -> str:
    """A value known exactly: up to 6 significant digits, no trailing zeros."""
    return (f"{x:+,.6g}" if sign else f"{x:,.6g}").replace("-", MINUS)


def ci(e: Estimate, *, sign: bool = False) -> str:
    """``mean ± half-width`` with the half-width to two significant digits."""
    if e.n == 0:
        return "-"
    if e.n == 1 or math.isnan(e.halfwidth):
        return f"{num(e.mean, decimals(0.0, e.mean), sign=sign)} (n=1)"
    if e.halfwidth == 0:
        return f"{exact(e.mean, sign=sign)} ± 0"
    d = decimals(e.halfwidth, e.mean)
    return f"{num(e.mean, d, sign=sign)} ± {num(e.halfwidth, d)}"


def interval(e: Estimate, *, sign: bool = True) -> str:
    """``+2.1 (CI +2.0 to +2.2)``."""
    if e.n < 2 or math.isnan(e.halfwidth):
        return num(e.mean, decimals(0.0, e.mean), sign=sign) + " (no interval)"
    if e.halfwidth == 0:
        return f"{exact(e.mean, sign=sign)} (exactly, in every replication)"
    d = decimals(e.halfwidth, e.mean)
    return (f"{num(e.mean, d, sign=sign)} (CI {num(e.low, d, sign=sign)} to "
            f"{num(e.high, d, sign=sign)})")


def pct(x: float, *, sign: bool = True) -> str:
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return num(x, 0, sign=sign)
    d = 0 if abs(x) >= 0.1 else (1 if abs(x) >= 0.01 else 2)
    return num(100 * x, d, sign=sign) + "%"


def relative(r: Ratio) -> str:
    """The relative difference ratio - 1 with its Fieller interval: ``+48% (+46% to +50%)``."""
    if math.isnan(r.ratio):
        return "n/a (baseline mean 0)"
    text = pct(r.ratio - 1)
    if not r.bounded:
        return text + " (interval unbounded)"
    if r.low == r.high:
        return text
    return f"{text} ({pct(r.low - 1)} to {pct(r.high - 1)})"


def p_value(p: float) -> str:
    if math.isnan(p):
        return "-"
    if p < 1e-4:
        return "<0.0001"
    return f"{p:.4f}" if p < 0.01 else f"{p:.3f}"
