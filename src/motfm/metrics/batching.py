"""How many items of a set one call may take, so that no call holds more than a fixed number of values.

Metrics over 3D volumes hold large temporaries per item (SSIM's Gaussian windows, a float64 FFT, a row of a
distance block): a call over a whole set of 128^3 volumes can take tens of GiB. Each metric states its budget
in values and asks here how many items fit.
"""

from __future__ import annotations


def items_per_call(item_values: int, budget: int, most: int | None = None) -> int:
    """Items of ``item_values`` values each that fit in ``budget`` values: at least 1, at most ``most``.

    Args:
        item_values: values one item contributes to a call (its ``numel``, or a block's row length).
        budget: the most values one call may hold.
        most: an upper bound of its own (a caller's batch size); ``None`` for none.

    Returns:
        ``max(1, min(most, budget // item_values))``.
    """
    fit = max(1, budget // max(1, item_values))
    return fit if most is None else max(1, min(most, fit))
