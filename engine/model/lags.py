"""The lag inputs: what the seed played whole bars before the note about to be drawn.

A strain returns at a phrase boundary, and only the network knows where it is in the form (the
PHRASE input). So the decoder is shown, at every step and for each lag of `LAG_BARS` whole bars,
the seed's note that sat exactly that long before the previous note (same onset tick, same rank
in its chord), as in Magenta's Lookback RNN:

- the shift, pitch and duration of the note after it: what comes next if the tune repeats the
  seed from that lag on (class + 1; 0: there is none);
- whether the previous note itself repeats the lagged one (0: no lagged note, 1: another pitch,
  2: the same pitch): whether the tune is repeating at that lag now.

Only the seed is looked back into, in training as in generation. Bar lengths are read from the
seed's own bar positions (`engine.model.copy.lookback.bar_ticks`): a seed that crosses no bar
line gives no lag inputs. One implementation serves training (`window_lags`, per window) and
generation (`LagTracker`, per step), so the two read the same thing.
"""

from __future__ import annotations

import torch

from engine.model.copy.lookback import LAG_BARS, RANKS, bar_ticks, chord_ranks
from engine.model.events import COPY_COLUMNS, DURATION, PITCH, SHIFT

LAG_FIELDS = 4  # per lag: next shift, next pitch, next duration, repeating now
_FAR = 10**15  # the key of a column that is no seed note (sorts after every real one)


def lag_sizes(n_shift: int, n_pitch: int, n_duration: int) -> tuple[int, ...]:
    """The number of classes of each lag input column, lag by lag."""
    return (n_shift + 1, n_pitch + 1, n_duration + 1, 3) * len(LAG_BARS)


class SeedLags:
    """The seed's notes, searchable by (onset, chord rank), and each row's lags in ticks.

    seed (B, S, >= 5) right-padded, seed_len (B,)."""

    def __init__(
        self, seed: torch.Tensor, seed_len: torch.Tensor, max_shift: int, max_position: int
    ) -> None:
        B, S = seed.size(0), seed.size(1)
        device = seed.device
        real = torch.arange(S, device=device)[None, :] < seed_len[:, None]  # (B, S)
        compact = seed[..., list(COPY_COLUMNS)].masked_fill(~real[..., None], -1)  # (B, S, 4)
        bar = bar_ticks(compact, S, max_shift, max_position) if S else seed_len.new_zeros(B)
        self.lags = bar[:, None] * torch.tensor(LAG_BARS, device=device)  # (B, L); 0: none
        shift = seed[..., SHIFT].masked_fill(~real, 0)
        self.time = torch.cumsum(shift, dim=1)  # (B, S) onsets from the seed's first
        self.rank = chord_ranks(shift, real)
        self.keys = torch.where(real, self.time * RANKS + self.rank.clamp_max(RANKS - 1), _FAR)
        self.fields = seed[..., [SHIFT, PITCH, DURATION]].clone()  # (B, S, 3)
        self.seed_len = seed_len

    def select(self, rows: torch.Tensor) -> None:
        self.lags, self.time, self.rank = self.lags[rows], self.time[rows], self.rank[rows]
        self.keys, self.fields, self.seed_len = (
            self.keys[rows],
            self.fields[rows],
            self.seed_len[rows],
        )

    def inputs(
        self, time: torch.Tensor, rank: torch.Tensor, pitch: torch.Tensor, real: torch.Tensor
    ) -> torch.Tensor:
        """(B, N, LAG_FIELDS x L) the lag inputs of steps whose previous note has onset `time`
        (B, N, from the seed's first onset), chord rank `rank`, pitch `pitch` and is a note where
        `real` (B, N)."""
        B, N = time.shape
        L = self.lags.size(1)
        S = self.keys.size(1)
        out = time.new_zeros(B, N, L, LAG_FIELDS)
        if S == 0:
            return out.view(B, N, L * LAG_FIELDS)
        want = (time[:, :, None] - self.lags[:, None, :]) * RANKS  # (B, N, L)
        want = want + rank.clamp_max(RANKS - 1)[:, :, None]
        at = torch.searchsorted(self.keys, want.view(B, N * L)).view(B, N, L).clamp_max(S - 1)
        found = self.keys.gather(1, at.view(B, -1)).view(B, N, L) == want
        found = found & real[:, :, None] & (self.lags[:, None, :] > 0)
        nxt = (at + 1).clamp_max(S - 1)
        has_next = found & (at + 1 < self.seed_len[:, None, None])
        for f in range(3):  # the next note's shift, pitch, duration
            value = self.fields[..., f].gather(1, nxt.view(B, -1)).view(B, N, L)
            out[..., f] = torch.where(has_next, value + 1, 0)
        lagged = self.fields[..., 1].gather(1, at.view(B, -1)).view(B, N, L)
        same = lagged == pitch[:, :, None]
        out[..., 3] = torch.where(found, 1 + same.long(), 0)
        return out.view(B, N, L * LAG_FIELDS)


def window_lags(
    seed: torch.Tensor, target: torch.Tensor, max_shift: int, max_position: int
) -> torch.Tensor:
    """(T, LAG_FIELDS x L) the lag inputs of each decoder step of one training window: seed
    (S, >= 5), target (T, >= 5) (rows whose pitch is negative are no notes: EOS, padding). Step
    t's previous note is the window's note S + t - 1 (the seed's last note for step 0)."""
    S, T = seed.size(0), target.size(0)
    lags = SeedLags(seed[None], torch.tensor([S]), max_shift, max_position)
    if S == 0 or T == 0:
        return torch.zeros(T, len(LAG_BARS) * LAG_FIELDS, dtype=torch.int64)
    ev = torch.cat([seed[:, :3], target[:, :3]])[None]  # (1, S + T, 3)
    real = ev[..., PITCH] >= 0
    shift = ev[..., SHIFT].masked_fill(~real, 0)
    time = torch.cumsum(shift, dim=1)
    rank = chord_ranks(shift, real)
    prev = slice(S - 1, S + T - 1)
    return lags.inputs(time[:, prev], rank[:, prev], ev[:, prev, PITCH], real[:, prev])[0]


class LagTracker:
    """Generation's lag inputs, one step at a time: the seed's notes, and each row's previous
    note (onset, chord rank, pitch)."""

    def __init__(
        self, seed: torch.Tensor, seed_len: torch.Tensor, max_shift: int, max_position: int
    ) -> None:
        self.seed = SeedLags(seed, seed_len, max_shift, max_position)
        last = (seed_len - 1).clamp_min(0)[:, None]  # (B, 1)
        self.real = seed_len[:, None] > 0
        if seed.size(1):
            self.time = self.seed.time.gather(1, last)
            self.rank = self.seed.rank.gather(1, last)
            self.pitch = seed[..., PITCH].gather(1, last)
        else:
            self.time = self.rank = self.pitch = seed_len.new_zeros(seed.size(0), 1)

    def inputs(self) -> torch.Tensor:
        """(B, LAG_FIELDS x L) the next step's lag inputs."""
        return self.seed.inputs(self.time, self.rank, self.pitch, self.real)[:, 0]

    def append(self, shift: torch.Tensor, pitch: torch.Tensor) -> None:
        """The note (shift (B, 1), pitch (B, 1)) just drawn."""
        self.rank = torch.where((shift == 0) & self.real, self.rank + 1, 0)
        self.time = self.time + shift
        self.pitch = pitch
        self.real = torch.ones_like(self.real)

    def select(self, rows: torch.Tensor) -> None:
        self.seed.select(rows)
        self.time, self.rank = self.time[rows], self.rank[rows]
        self.pitch, self.real = self.pitch[rows], self.real[rows]
