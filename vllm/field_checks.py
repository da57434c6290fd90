"""Checks for values a user hands in (sampling parameters, prompts, engine
arguments). Each failure names the field, shows the value and says what is allowed,
because the message is all a user (or an HTTP 400 body) gets. A wrong type is a
TypeError, as Python raises for one; a value out of range is a ValueError.

Each check returns the value in its canonical type (an ``int`` for a numpy
integer, a ``float`` for an ``int`` given where a float is wanted), so callers
store plain Python values.
"""

import math
import numbers
from collections.abc import Iterable
from typing import Any

# Seeds travel as signed 64-bit integers (as in vLLM's OpenAI server).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def shown(value: Any) -> str:
    """repr, cut short: a 100k-token list must not become a 100k-token message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _range_text(low, high, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"> {low}" if low_open else f">= {low}"
    return f"< {high}" if high_open else f"<= {high}"


def _type_error(name: str, value: Any, wanted: str) -> TypeError:
    return TypeError(
        f"{name} must be {wanted}; got {type(value).__name__} {shown(value)}"
    )


def is_int(value: Any) -> bool:
    """True for Python and numpy integers; bool is refused although Python counts
    it as an int, since True for a count is a mistake, not a 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> int | None:
    if value is None and optional:
        return None
    if not is_int(value):
        raise _type_error(name, value, "an int or None" if optional else "an int")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_range_text(low, high)}; got {value}")
    return value


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (NaN and infinities are refused) within the bounds."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise _type_error(name, value, "a number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number; got {shown(value)}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        allowed = _range_text(low, high, low_open, high_open)
        raise ValueError(f"{name} must be {allowed}; got {number}")
    return number


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _type_error(name, value, "True or False")
    return value


def check_str(name: str, value: Any, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise _type_error(name, value, "a string or None" if optional else "a string")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, choices))}; got {shown(value)}"
        )
    return value


def check_list(name: str, value: Any, item: str) -> list:
    """A list or tuple (of ``item``s, for the message); -> a new list."""
    if not isinstance(value, list | tuple):
        raise _type_error(name, value, f"a list of {item}")
    return list(value)


def check_int_list(
    name: str,
    value: Any,
    low: int | None = None,
    high: int | None = None,
    meaning: str = "",
) -> list[int]:
    """A list of ints, each in [low, high]; the message names the first bad item
    by its index and says what the range means (``meaning``)."""
    items = check_list(name, value, "ints")
    # The common case (plain ints in range) in C-speed passes: prompts are long.
    if set(map(type, items)) <= {int} and (
        not items
        or ((low is None or min(items) >= low) and (high is None or max(items) <= high))
    ):
        return items
    out = []
    for i, item in enumerate(items):
        if not is_int(item):
            raise _type_error(f"{name}[{i}]", item, "an int")
        item = int(item)
        if (low is not None and item < low) or (high is not None and item > high):
            allowed = _range_text(low, high) + (f" ({meaning})" if meaning else "")
            raise ValueError(f"{name}[{i}] must be {allowed}; got {item}")
        out.append(item)
    return out


def check_token_ids(name: str, value: Any, vocab_size: int) -> list[int]:
    """Token ids: ints in the vocabulary; the message says 'out of vocabulary'
    and names the vocabulary size (as vLLM words it)."""
    items = check_int_list(name, value)
    if items and (min(items) < 0 or max(items) >= vocab_size):
        i, bad = next((i, t) for i, t in enumerate(items) if not 0 <= t < vocab_size)
        raise ValueError(
            f"{name}[{i}]: token id {bad} is out of vocabulary (vocabulary size "
            f"{vocab_size}: ids 0 to {vocab_size - 1})"
        )
    return items


def check_str_list(name: str, value: Any) -> list[str]:
    items = check_list(name, value, "strings")
    for i, item in enumerate(items):
        check_str(f"{name}[{i}]", item)
    return items
