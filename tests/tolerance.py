"""Float comparisons that hold on any CPU and thread count.

Two float32 computations of the same thing differ by rounding that grows with the size of the
numbers summed, not with each result: a logit near 0 in a row of logits near 30 carries the
rounding of terms near 30. So the allowed difference is a fraction of the larger tensor's scale
(its largest magnitude, at least 1), never a fixed absolute number and never per element.
"""

from __future__ import annotations

import torch

# float32 has a 1.2e-7 relative step; a few hundred roundings in another order (other SIMD
# widths, other thread splits) stay well within these.
SAME_MATH = 1e-5  # the same operations, summed in another order or another grouping
REARRANGED = 1e-4  # the same function rearranged (weights folded into tables, fused heads)


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """`actual` equals `expected` within `rel` times the scale of the numbers involved."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    a, b = actual.double(), expected.double()
    scale = max(a.abs().max().item(), b.abs().max().item(), 1.0) if a.numel() else 1.0
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= rel * scale, (
        f"max difference {err:.3g} exceeds {rel:g} x scale {scale:.3g} = {rel * scale:.3g}"
    )
