"""Human number formatting for reports: 1.2 M, 3.4 MFLOPs, 4.0 kB, 89.6%. None renders as a dash."""

from __future__ import annotations

DASH = "—"
_PREFIXES = ("", "k", "M", "G", "T", "P")


def _si(value: float) -> tuple[float, str]:
    """Scale to [1, 1000) with an SI prefix (k = 1000)."""
    i = 0
    while abs(value) >= 999.95 and i < len(_PREFIXES) - 1:
        value /= 1000.0
        i += 1
    return value, _PREFIXES[i]


def count(n: float | None) -> str:
    """Exact below 10,000 (with separators), else one decimal with k/M/G: '12.3 k', '1.2 M'."""
    if n is None:
        return DASH
    if abs(n) < 10_000:
        return f"{round(n):,}"
    value, prefix = _si(float(n))
    return f"{value:.1f} {prefix}"


def flops(n: float | None) -> str:
    """'3.4 MFLOPs'; plain 'FLOPs' below a thousand."""
    if n is None:
        return DASH
    value, prefix = _si(float(n))
    return f"{value:.0f} FLOPs" if not prefix else f"{value:.1f} {prefix}FLOPs"


def nbytes(n: float | None) -> str:
    """Decimal units: '900 B', '4.0 kB', '1.5 MB'."""
    if n is None:
        return DASH
    value, prefix = _si(float(n))
    return f"{value:.0f} B" if not prefix else f"{value:.1f} {prefix}B"


def percent(fraction: float | None) -> str:
    """A fraction as a percent with one decimal: 0.896 -> '89.6%'."""
    return DASH if fraction is None else f"{100.0 * fraction:.1f}%"


def points(delta: float | None) -> str:
    """A difference of fractions in signed percentage points: -0.006 -> '-0.6 pp'."""
    return DASH if delta is None else f"{100.0 * delta:+.1f} pp"


def ms(value: float | None) -> str:
    """Milliseconds with precision that suits the size: '0.052', '0.50', '8.00', '123.4'."""
    if value is None:
        return DASH
    if abs(value) < 0.1:
        return f"{value:.3f}"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def ratio(value: float | None) -> str:
    """A multiplier: 0.1 -> '0.10×'."""
    return DASH if value is None else f"{value:.2f}×"
