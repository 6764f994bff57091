"""The one integer validator: a value that must be an int (numpy's too, never a bool) in a range.

Every public number of flirdata (workers, prefetch, epoch, seed, a byte budget, a count) is checked
here, so "an integer" means the same everywhere and a bad one is one line naming the argument,
the value and the allowed range. Command lines parse their text first (``flirdata.cliargs``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["check_int", "is_int"]


def is_int(value: object, minimum: int | None = None, maximum: int | None = None) -> bool:
    """Whether ``value`` is an int (or a numpy integer), not a bool (``True`` is an ``int`` to Python),
    within ``minimum..maximum`` (None: unbounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def check_int(
    name: str,
    value: object,
    minimum: int,
    maximum: int | None = None,
    *,
    error: type[Exception] = ValueError,
    expected: str | None = None,
) -> int:
    """``value`` as an int if it is one in ``minimum..maximum``, else ``error`` naming it.

    The message is "NAME must be an integer >= MINIMUM, got VALUE" (past ``maximum``: "... an
    integer in MINIMUM..MAXIMUM, ..."); ``expected`` words the range instead ("a positive int").
    """
    if not is_int(value, minimum):
        raise error(f"{name} must be {expected or f'an integer >= {minimum}'}, got {value!r}")
    if not is_int(value, minimum, maximum):
        raise error(f"{name} must be {expected or f'an integer in {minimum}..{maximum}'}, got {value!r}")
    return int(value)  # type: ignore[call-overload]
