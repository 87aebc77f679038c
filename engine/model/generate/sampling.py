"""Sampling for the batched decoder: each row's settings and uniforms as tensors, and one class
per row drawn by inverse CDF under top-p and top-k."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.model.checkpoint import LoadedModel

if TYPE_CHECKING:
    from engine.model.generate.request import Row

CHUNK = 64  # steps of uniforms drawn at once from each row's generator


class Sampling:
    """Each row's sampling settings as (B, 1) tensors on the device, and its uniforms: drawn
    CHUNK steps at a time from the row's own generator, so a row samples the same notes alone
    or in any batch, and no generator is touched per note."""

    def __init__(self, lm: LoadedModel, rows: list[Row], device: torch.device) -> None:
        codec = lm.codec
        self.device = device
        self.generators = [r.generator for r in rows]
        temperature = torch.tensor([[r.req.options.temperature] for r in rows], dtype=torch.float32)
        self.inv_temp = (1.0 / temperature).to(device)  # (B, 1)
        self.top_p = torch.tensor([[r.req.options.top_p] for r in rows], dtype=torch.float32).to(
            device
        )
        sizes = (codec.n_shift, codec.n_pitch, codec.n_duration, codec.n_velocity)
        # per field: the last rank top-k keeps (n - 1 when top-k is off)
        self.last_rank = [
            torch.tensor([[min(r.req.knobs.top_k or n, n) - 1] for r in rows]).to(device)
            for n in sizes
        ]
        bias = torch.from_numpy(np.stack([r.pitch_bias for r in rows])).to(device)
        self.pitch_bias = bias * self.inv_temp  # (B, n_pitch): the key bias after temperature
        self.drawn = torch.empty(0)

    def uniforms(self, t: int) -> torch.Tensor:
        """(4, B, 1): step t's uniform of each field of each row."""
        if t % CHUNK == 0:
            drawn = torch.stack([torch.rand(CHUNK, 4, generator=g) for g in self.generators], 2)
            drawn = drawn[..., None]  # (CHUNK, 4, B, 1)
            if self.device.type == "cuda":  # pinned: the copy does not wait for the GPU
                drawn = drawn.pin_memory()
            self.drawn = drawn.to(self.device, non_blocking=True)
        return self.drawn[t % CHUNK]

    def select(self, rows: torch.Tensor, keep: list[int]) -> None:
        self.generators = [self.generators[j] for j in keep]
        self.inv_temp, self.top_p = self.inv_temp[rows], self.top_p[rows]
        self.last_rank = [r[rows] for r in self.last_rank]
        self.pitch_bias = self.pitch_bias[rows]
        self.drawn = self.drawn[:, :, rows]


def changed_share(without: torch.Tensor, with_net: torch.Tensor) -> torch.Tensor:
    """(B, 1) total variation distance between the softmaxes of two (B, n) logit rows."""
    diff = without.softmax(dim=-1) - with_net.softmax(dim=-1)
    return 0.5 * diff.abs().sum(dim=-1, keepdim=True)


def sample(
    scaled: torch.Tensor, last_rank: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """One class per row by inverse CDF with the row's own uniform u, over the smallest head of
    the distribution that holds top_p of it and at most top_k classes. scaled (B, n): logits /
    temperature, -inf where the grammar forbids; last_rank (B, 1): top_k - 1 (n - 1 when off);
    top_p, u (B, 1). Returns (B, 1) classes."""
    ordered, order = scaled.sort(dim=-1, descending=True, stable=True)  # (B, n)
    cdf = ordered.softmax(dim=-1).cumsum(dim=-1)  # (B, n)
    last = torch.minimum(torch.searchsorted(cdf, top_p), last_rank)  # (B, 1) first cdf >= top_p
    # The first rank whose cdf reaches u x the kept mass: a class of probability 0 never does.
    pick = torch.searchsorted(cdf, u * cdf.gather(1, last))  # (B, 1)
    return order.gather(1, pick)
