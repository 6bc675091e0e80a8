"""Parameter checks shared by every public entry point.

Each check returns the validated (and, for numbers, converted) value or
raises ``ValueError`` naming the parameter, the bad value and what is
allowed, in the style of scikit-learn::

    side='up' is invalid: expected one of 'none', 'left', 'right'
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np


def _fail(name, value, expected):
    raise ValueError(f"{name}={value!r} is invalid: expected {expected}")


def check_choice(name, value, allowed):
    """``value`` must be one of ``allowed``."""
    if value not in allowed:
        _fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        _fail(name, value, "True or False")
    return bool(value)


def _range_text(low, high, low_open, high_open):
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    if low is not None and high is not None:
        return f"in {lo}, {hi}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_number(name, value, low=None, high=None, *, low_open=False, high_open=False,
                 integer=False):
    """A finite real (or integer) number within an optional range."""
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, Integral) if integer else isinstance(value, Real)
    if isinstance(value, (bool, np.bool_)) or not ok_type:
        _fail(name, value, f"{kind} {_range_text(low, high, low_open, high_open)}".rstrip())
    v = int(value) if integer else float(value)
    bad = not np.isfinite(v) \
        or (low is not None and (v <= low if low_open else v < low)) \
        or (high is not None and (v >= high if high_open else v > high))
    if bad:
        _fail(name, value, f"{kind} {_range_text(low, high, low_open, high_open)}".rstrip())
    return v


def check_vector(name, value, n, *, increasing=False, bound=None):
    """``n`` finite numbers (a seed position, a window ...) as a tuple of floats;
    with ``bound``, each at most that in magnitude."""
    within = "" if bound is None else f" within +-{bound:.0e}"
    try:
        v = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        _fail(name, value, f"{n} finite numbers{within}")
    if len(v) != n or not all(np.isfinite(v)) or (
            bound is not None and any(abs(x) > bound for x in v)):
        _fail(name, value, f"{n} finite numbers{within}")
    if increasing and any(b <= a for a, b in zip(v, v[1:])):
        _fail(name, value, f"{n} increasing numbers")
    return v


def check_labels(name, value):
    """A non-empty tuple of label values > 0."""
    try:
        v = tuple(value)
    except TypeError:
        _fail(name, value, "a sequence of integer label values > 0")
    if not v or any(isinstance(x, bool) or not isinstance(x, Integral) or x <= 0 for x in v):
        _fail(name, value, "a sequence of integer label values > 0")
    return tuple(int(x) for x in v)


#: coordinates beyond this (mm; 1000 km) are no shape in millimetres, and their
#: squares would overflow the alignment's sums
MAX_ABS_COORD_MM = 1e9


def shape_problem(points):
    """What makes ``points`` (N, 3), a shape in mm, unusable, or None: not
    finite, coordinates beyond :data:`MAX_ABS_COORD_MM`, or degenerate (every
    point at one place: no size and no orientation to align). The text
    continues a sentence whose subject names the shape."""
    y = np.asarray(points, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        return "has non-finite coordinates"
    big = float(np.abs(y).max(initial=0.0))
    if big > MAX_ABS_COORD_MM:
        return (f"has coordinates up to {big:.3g} mm (beyond {MAX_ABS_COORD_MM:.0e} mm): "
                "not a shape in millimetres")
    spread = float(np.sqrt(np.mean(np.sum((y - y.mean(0)) ** 2, axis=1)))) if len(y) else 0.0
    if not spread > 1e-9 * max(big, 1.0):
        return "is degenerate: all its points lie at one place (no size, no orientation to align)"
    return None
