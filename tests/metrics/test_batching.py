"""The items-per-call rule shared by the memory-bounded metrics."""

import pytest

from motfm.metrics.batching import items_per_call


@pytest.mark.parametrize(
    ("item_values", "budget", "most", "expected"),
    [
        (64**3, 32 * 64**3, None, 32),  # 64^3 volumes under the SSIM budget: 32 per call
        (128**3, 32 * 64**3, 32, 4),  # 128^3: 8x the values, 4 per call
        (64**3, 32 * 64**3, 16, 16),  # the caller's own batch size is the upper bound
        (10, 25, None, 2),  # whole items only: 2.5 rounds down
        (10**9, 100, None, 1),  # an item larger than the budget still goes through, alone
        (0, 100, 8, 8),  # an empty item does not divide by zero
    ],
)
def test_items_per_call_fit_the_budget(item_values, budget, most, expected):
    assert items_per_call(item_values, budget, most) == expected
