"""A learnt copy path over the seed, as in a pointer-generator network (See et al., 2017).

For the shift, pitch and duration heads, attention over the seed's notes proposes the field of
the note that *followed* the attended one, and a gate, learnt with it, mixes that proposal with
the head's own distribution. The attention matches *figures*: the latest `FIGURE_NOTES` notes
(shift, pitch, duration and the interval from the note before) against the same window ending at
each seed note, plus what the encoder and the head know. Only the seed is pointed at: without a
seed the gate is shut, so the network alone predicts, and whatever the pointer adds is what the
seed tells. The heads then give log-probabilities, which every consumer of logits reads alike.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn as nn

from engine.model.events import DURATION, PITCH, SHIFT

POINTER_FIELDS = (SHIFT, PITCH, DURATION)  # index in this tuple == the field's column
FIGURE_NOTES = 6  # notes in a figure the attention matches
FIGURE_DIM = 64  # width of one note's figure embedding
MAX_INTERVAL = 24  # intervals clamped to +- this many semitones
GATE_BIAS = -3.0  # a new pointer starts nearly shut (sigmoid: 5%), so it first changes little
FLOOR = 1e-30  # the smallest probability whose log is taken (float32 holds it)


def seed_fields(seed: torch.Tensor, seed_len: torch.Tensor) -> torch.Tensor:
    """(B, S, 3): the seed's shift, pitch and duration, -1 past each row's `seed_len`."""
    S = seed.size(1)
    beyond = torch.arange(S, device=seed.device)[None, :] >= seed_len[:, None]  # (B, S)
    return seed[..., : len(POINTER_FIELDS)].masked_fill(beyond[..., None], -1)


def next_fields(fields: torch.Tensor) -> torch.Tensor:
    """(B, S, 3): at seed step s, the fields of seed note s + 1 (-1 where there is none)."""
    nxt = torch.full_like(fields, -1)
    nxt[:, :-1] = fields[:, 1:]
    return nxt


class FigureEncoder(nn.Module):
    """A vector per position of a note sequence for the window of `FIGURE_NOTES` notes ending
    there (notes before the start count as none); -1 fields are none."""

    def __init__(self, sizes: tuple[int, int, int], out: int) -> None:
        super().__init__()
        self.sizes = (*sizes, 2 * MAX_INTERVAL + 1)  # shift, pitch, duration; interval
        self.tables = nn.ModuleList(nn.Embedding(n + 1, FIGURE_DIM) for n in self.sizes)
        self.mix = nn.Linear(FIGURE_NOTES * FIGURE_DIM, out)

    def indices(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, N, 3) -> (B, N, 4): each note's row in each of the four tables (shift, pitch,
        duration, the interval from the note before); none where a field is -1."""
        pitch = seq[..., 1]
        prev = torch.cat([torch.full_like(pitch[:, :1], -1), pitch[:, :-1]], dim=1)
        interval = self.interval(pitch, prev)
        none = seq.new_tensor(self.sizes[:3])
        return torch.cat([torch.where(seq < 0, none, seq), interval[..., None]], dim=-1)

    def interval(self, pitch: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """The interval table's row of each pitch after `prev` (none where either is -1)."""
        interval = (pitch - prev).clamp(-MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
        return interval.masked_fill((pitch < 0) | (prev < 0), 2 * MAX_INTERVAL + 1)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, N, 3) -> (B, N, FIGURE_DIM): the sum of each note's four table rows."""
        index = self.indices(seq)
        out = None
        for col, table in enumerate(self.tables):
            e = cast(nn.Embedding, table)(index[..., col])
            out = e if out is None else out + e
        assert out is not None
        return out

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For generation: every table row through its window position's share of `mix`, one
        table (K x rows, out), and the row of value 0 of each (position, column) (K, 4); the
        figure of a window is then `mix.bias` plus the sum of its notes' rows (`indices`)."""
        K, D = FIGURE_NOTES, FIGURE_DIM
        parts, offsets, row = [], [], 0
        for i in range(K):
            w = self.mix.weight[:, i * D : (i + 1) * D]  # (out, D) position i, oldest first
            at = []
            for table in self.tables:
                parts.append(cast(nn.Embedding, table).weight @ w.T)
                at.append(row)
                row += parts[-1].size(0)
            offsets.append(at)
        return torch.cat(parts), torch.tensor(offsets, device=self.mix.weight.device)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq (B, N, 3) -> (B, N, out): the figure ending at each position."""
        B, N, K = seq.size(0), seq.size(1), FIGURE_NOTES
        padded = torch.cat([seq.new_full((B, K, seq.size(2)), -1), seq], dim=1)  # (B, K + N, 3)
        e = self.embed(padded)
        windows = [e[:, K - i : K - i + N] for i in reversed(range(K))]  # oldest first
        return self.mix(torch.cat(windows, dim=-1))


class SeedPointer(nn.Module):
    """The pointer's parameters: the figure encoder, keys of the seed's steps, and a query and a
    gate per field. `sizes`: the classes of shift, pitch and duration; H: the network's width."""

    def __init__(self, sizes: tuple[int, int, int], H: int) -> None:
        super().__init__()
        self.figures = FigureEncoder(sizes, H)
        self.key_figure = nn.Linear(H, H, bias=False)
        self.key = nn.Linear(H, H, bias=False)  # on the encoder's states
        self.query = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in POINTER_FIELDS)
        self.gate = nn.ModuleList(nn.Linear(H, 1) for _ in POINTER_FIELDS)
        # how sure the attention is (its largest weight) opens the gate by this much, per field
        self.gate_sure = nn.Parameter(torch.zeros(len(POINTER_FIELDS)))
        for q in self.queries():
            nn.init.zeros_(q.weight)  # at first only the figures match
        for g in self.gates():
            nn.init.zeros_(g.weight)
            nn.init.constant_(g.bias, GATE_BIAS)

    def queries(self) -> list[nn.Linear]:
        return [cast(nn.Linear, q) for q in self.query]

    def gates(self) -> list[nn.Linear]:
        return [cast(nn.Linear, g) for g in self.gate]

    def keys(self, fields: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """(B, S, H): the seed's figures (`seed_fields`) and encoder states (B, S, H)."""
        return self.key_figure(self.figures(fields)) + self.key(states)

    def figure_queries(
        self, fields: torch.Tensor, seed_len: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """(B, T, H): before each target note, the figure of the notes just before it (the
        seed's last notes, then the target's). target (B, T, 3+), negative where not a note."""
        B, S, T = fields.size(0), fields.size(1), target.size(1)
        notes = target[..., : len(POINTER_FIELDS)].clamp_min(-1)
        both = torch.cat([fields, notes], dim=1)  # (B, S + T, 3)
        # row b's sequence: its seed_len[b] seed notes, then its targets
        j = torch.arange(S + T, device=fields.device)[None, :]
        index = torch.where(j < seed_len[:, None], j, S + j - seed_len[:, None])
        index = index.clamp_max(S + T - 1)
        seq = both.gather(1, index[..., None].expand(B, S + T, 3))
        seq = seq.masked_fill((j >= seed_len[:, None] + T)[..., None], -1)
        figs = self.figures(seq)  # (B, S + T, H)
        at = (seed_len[:, None] + torch.arange(T, device=fields.device)[None, :] - 1).clamp_min(0)
        return figs.gather(1, at[..., None].expand(B, T, figs.size(-1)))

    def mix(
        self,
        field: int,
        hidden: torch.Tensor,
        logits: torch.Tensor,
        keys: torch.Tensor,
        query: torch.Tensor,
        nxt: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probabilities of `field` (B, T, n): the head's hidden layer (B, T, H) and logits
        (B, T, n) mixed with the pointer over the seed's keys (B, S, H), with the figure
        queries (B, T, H) and what each seed step points at (`next_fields`, B, S, 3)."""
        targets = nxt[..., field]  # (B, S)
        valid = targets >= 0
        has = valid.any(dim=-1)  # (B,)
        q = query + self.query[field](hidden)  # (B, T, H)
        scores = q @ keys.transpose(1, 2) / math.sqrt(hidden.size(-1))  # (B, T, S)
        # a row with nothing to point at attends evenly (no NaN) and its gate is shut
        scores = scores.masked_fill(~(valid | ~has[:, None])[:, None, :], float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1)
        index = targets.clamp_min(0)[:, None, :].expand_as(attn)
        copy = attn.new_zeros(logits.shape).scatter_add_(-1, index, attn)  # (B, T, n)
        sure = attn.amax(dim=-1, keepdim=True) * self.gate_sure[field]
        gate = torch.sigmoid(self.gate[field](hidden).float() + sure) * has[:, None, None]
        p = (1 - gate) * torch.softmax(logits.float(), dim=-1) + gate * copy
        return torch.log(p.clamp_min(FLOOR))
