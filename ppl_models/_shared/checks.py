"""Validation of integers, floats and choices, with one message style.

Every message reads ``"<name> must be <rule>; got <value>"``: for example
``"num_steps must be a positive integer; got True"``. ``True`` and ``False`` are not integers
nor numbers here, although Python's ``bool`` subclasses ``int``: a flag passed where a count
belongs is a mistake to report, not the number 1.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

__all__ = ["check_choice", "check_float", "check_int", "float_rule", "int_rule"]

T = TypeVar("T")


def int_rule(minimum: int = 1) -> str:
    """The words of the integer rule: ``"a positive integer"`` for ``minimum=1``,
    ``"a non-negative integer"`` for 0, ``"an integer of at least M"`` otherwise."""
    if minimum == 1:
        return "a positive integer"
    if minimum == 0:
        return "a non-negative integer"
    return f"an integer of at least {minimum}"


def check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (Python or NumPy, not ``bool``) of at
    least ``minimum``.

    Raises
    ------
    ValueError
        ``"<name> must be a positive integer; got <value!r>"`` (see :func:`int_rule`).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be {int_rule(minimum)}; got {value!r}")
    return int(value)


def float_rule(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
) -> str:
    """The words of the float rule: ``"a finite number"``, ``"a positive number"``,
    ``"a non-negative number"`` or ``"a number in [a, b)"`` (brackets as the bounds are
    closed or open)."""
    if maximum is None:
        if minimum is None:
            return "a finite number"
        if minimum == 0:
            return "a positive number" if strict_minimum else "a non-negative number"
        return f"a number {'above' if strict_minimum else 'of at least'} {minimum:g}"
    low = "(-inf" if minimum is None else f"{'(' if strict_minimum else '['}{minimum:g}"
    high = f"{maximum:g}{')' if strict_maximum else ']'}"
    return f"a number in {low}, {high}"


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    strict_maximum: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (``bool`` is refused).

    Raises
    ------
    ValueError
        ``"<name> must be <rule>; got <value!r>"`` (see :func:`float_rule`).
    """
    rule = float_rule(minimum, maximum, strict_minimum=strict_minimum,
                      strict_maximum=strict_maximum)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {rule}; got {value!r}")
    number = float(value)
    inside = math.isfinite(number)
    if inside and minimum is not None:
        inside = number > minimum if strict_minimum else number >= minimum
    if inside and maximum is not None:
        inside = number < maximum if strict_maximum else number <= maximum
    if not inside:
        raise ValueError(f"{name} must be {rule}; got {value!r}")
    return number


def check_choice(value: T, name: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices`` (a registry's keys, a tuple, ...).

    Raises
    ------
    ValueError
        ``"<name> must be one of ['a', 'b']; got 'c'"`` (choices sorted).
    """
    options = list(choices)
    if value not in options:
        shown = sorted(options, key=str)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
    return value
