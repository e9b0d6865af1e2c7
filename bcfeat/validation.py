"""Checks of numeric settings where they enter the library (notebook parameters, configs).

A bad value fails at once with a message naming the setting, the value and the valid
range, instead of minutes later as an unrelated error (``steps=-1`` as a missing
checkpoint, ``batch_size=0`` as a sampling error, ``max_per_site=-5`` as "all images").
"""

from __future__ import annotations

import numbers


def require_int(name: str, value: object, minimum: int, maximum: int | None = None, meaning: str = "") -> int:
    """``value`` as an int in ``[minimum, maximum]``, else ValueError naming ``name`` and the range.

    Parameters
    ----------
    name : str
        The setting as the user wrote it (``"max_per_site"``, ``"DetectorTrainingConfig.steps"``).
    value : object
        Must be a whole number (``bool`` is refused: ``True`` is not a count).
    minimum, maximum : int
        The valid range (``maximum`` None: no upper bound).
    meaning : str
        What special values mean, appended to the message (``"0: every image"``).

    Examples
    --------
    >>> require_int("steps", 5, 1)
    5
    >>> require_int("max_per_site", -5, 0, meaning="0: every image")
    Traceback (most recent call last):
    ...
    ValueError: max_per_site=-5 is out of range: must be >= 0 (0: every image)
    """
    suffix = f" ({meaning})" if meaning else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r} is not a whole number{suffix}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}={value} is out of range: must be {bounds}{suffix}")
    return value


def require_positive(name: str, value: object) -> float:
    """``value`` as a float > 0, else ValueError naming ``name``.

    >>> require_positive("lr", 1e-3)
    0.001
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name}={value!r} is out of range: must be a number > 0")
    return float(value)
