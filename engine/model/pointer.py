"""A learnt copy path over the seed, as in a pointer-generator network (See et al., 2017).

For the shift, pitch and duration heads, attention over the seed's notes proposes the field of
the note that *followed* the attended one, and a gate, learnt with it, mixes that proposal with
the head's own distribution. Only the seed is pointed at: without a seed the gate is shut, so
the network alone is what predicts, and whatever the pointer adds is what the seed tells.
The heads then give log-probabilities, which every consumer of logits reads alike.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, cast

import torch
import torch.nn as nn

from engine.model.events import DURATION, PITCH, SHIFT

if TYPE_CHECKING:
    from engine.model.network import ModelConfig

POINTER_FIELDS = (SHIFT, PITCH, DURATION)  # index in this tuple == the field's column
GATE_BIAS = -3.0  # a new pointer starts nearly shut (sigmoid: 5%), so it first changes little
FLOOR = 1e-30  # the smallest probability whose log is taken (float32 holds it)


def next_fields(seed: torch.Tensor, seed_len: torch.Tensor) -> torch.Tensor:
    """(B, S, 3): at seed step s, the shift, pitch and duration of seed note s + 1; -1 where
    there is none (the last real note, padding, no seed)."""
    B, S = seed.shape[:2]
    nxt = torch.full((B, S, len(POINTER_FIELDS)), -1, dtype=torch.long, device=seed.device)
    if S > 1:
        nxt[:, :-1] = seed[:, 1:, : len(POINTER_FIELDS)]
    steps = torch.arange(S, device=seed.device)[None, :]
    return nxt.masked_fill((steps + 1 >= seed_len[:, None])[..., None], -1)


class SeedPointer(nn.Module):
    """The pointer's parameters: keys of the seed's steps, and a query and a gate per field."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden
        self.key = nn.Linear(H, H, bias=False)
        self.query = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in POINTER_FIELDS)
        self.gate = nn.ModuleList(nn.Linear(H, 1) for _ in POINTER_FIELDS)
        for q in self.queries():
            nn.init.zeros_(q.weight)  # attention starts even over the seed
        for g in self.gates():
            nn.init.zeros_(g.weight)
            nn.init.constant_(g.bias, GATE_BIAS)

    def queries(self) -> list[nn.Linear]:
        return [cast(nn.Linear, q) for q in self.query]

    def gates(self) -> list[nn.Linear]:
        return [cast(nn.Linear, g) for g in self.gate]

    def mix(
        self,
        field: int,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        keys: torch.Tensor,
        nxt: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probabilities of `field` (B, T, n): the head's hidden layer (B, T, H) and logits
        (B, T, n) mixed with the pointer over the seed's keys (B, S, H) and next fields
        (B, S, 3)."""
        targets = nxt[..., field]  # (B, S)
        valid = targets >= 0
        has = valid.any(dim=-1)  # (B,)
        q = self.query[field](hidden)  # (B, T, H)
        scores = q @ keys.transpose(1, 2) / math.sqrt(hidden.size(-1))  # (B, T, S)
        # a row with nothing to point at attends evenly (no NaN) and its gate is shut
        scores = scores.masked_fill(~(valid | ~has[:, None])[:, None, :], float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1)
        index = targets.clamp_min(0)[:, None, :].expand_as(attn)
        copy = attn.new_zeros(logits.shape).scatter_add_(-1, index, attn)  # (B, T, n)
        gate = torch.sigmoid(self.gate[field](hidden).float()) * has[:, None, None]  # (B, T, 1)
        p = (1 - gate) * torch.softmax(logits.float(), dim=-1) + gate * copy
        return torch.log(p.clamp_min(FLOOR))
