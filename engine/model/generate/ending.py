"""How a continuation ends. "close" (the default): its last onset is a held note of the key's
tonic chord, on the last strong beat of its last bar, sounding to the bar line; "open": it stops
wherever the notes reach the bar line (for music that will be extended).

The rules act on the decoder's distributions, like the grammar's: before the closing beat no
shift may jump past it; at or after it the pitch is a tonic-chord tone, the duration reaches the
end, and nothing follows but notes of the same chord. The key is the seed's (the generator's own
estimate, engine.model.generate.plan); without a seed, the notes made so far choose it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.model.checkpoint import LoadedModel
from engine.music.catalog import ENDINGS as _ENDINGS
from engine.music.endings import closing_hold
from engine.music.keys import PROFILES

if TYPE_CHECKING:
    from engine.model.generate.grammar import Grammar
    from engine.model.generate.request import Row

ENDINGS: tuple[str, ...] = _ENDINGS
NEVER = 1 << 40  # a tick no row reaches: the open ending's closing beat


def _triads(n_pitch: int, pitch_low: int) -> np.ndarray:
    """(24, n_pitch) bool: the pitches of each key's tonic triad (major C..B, minor C..B)."""
    pcs = (np.arange(n_pitch) + pitch_low) % 12
    out = np.zeros((24, n_pitch), dtype=bool)
    for k in range(24):
        tonic, third = k % 12, 4 if k < 12 else 3
        out[k] = np.isin(pcs, [tonic, (tonic + third) % 12, (tonic + 7) % 12])
    return out


class Closing:
    """The closing rules of a batch's rows, as tensors on the device (one row per request)."""

    def __init__(self, lm: LoadedModel, rows: list[Row], device: torch.device) -> None:
        codec, cfg = lm.codec, lm.codec.config
        tpb = cfg.ticks_per_beat
        final = [
            r.end_tick - min(r.bar, closing_hold(r.time_signature, tpb))
            if r.req.options.ending == "close"
            else NEVER
            for r in rows
        ]
        self.final = torch.tensor(final, dtype=torch.int64, device=device)[:, None]  # (B, 1)
        self.any = any(f < NEVER for f in final)
        self.pitch_low = cfg.pitch_low
        self.triads = torch.from_numpy(_triads(codec.n_pitch, cfg.pitch_low)).to(device)
        self.profiles = torch.from_numpy(PROFILES.astype(np.float32)).to(device)  # (24, 12)
        # the seed's key (plan's estimate) where there is one; -1: the notes made choose it
        keys = [
            -1 if r.tonal is None else r.tonal[0] + (12 if r.tonal[1] == "minor" else 0)
            for r in rows
        ]
        self.key = torch.tensor(keys, dtype=torch.int64, device=device)[:, None]  # (B, 1)
        self.hist = torch.zeros(len(rows), 12, device=device)  # pitch-class ticks made so far
        self.duration_ticks = torch.tensor(cfg.duration_bins, dtype=torch.int64, device=device)
        self.shift_ticks = torch.arange(codec.n_shift, device=device)[None, :]  # (1, n_shift)
        self.eos = codec.eos
        self.closing = torch.zeros(len(rows), 1, dtype=torch.bool, device=device)

    def select(self, rows: torch.Tensor) -> None:
        for name in ("final", "key", "hist", "closing"):
            setattr(self, name, getattr(self, name)[rows])

    def shift_mask(self, grammar: Grammar, mask: torch.Tensor) -> torch.Tensor:
        """The grammar's additive shift mask (B, n_shift) with the closing rules: before the
        closing beat no shift jumps past it; after the closing onset only its chord or the end.
        A row the rules would leave without a shift keeps the grammar's mask."""
        if not self.any:
            return mask
        landing = grammar.tick + self.shift_ticks  # (B, n_shift) with EOS past any end
        landing[:, self.eos] = NEVER
        before = grammar.tick < self.final
        past = torch.where(before, landing > self.final, self.shift_ticks > 0)
        past[:, self.eos] &= before[:, 0]  # after the closing onset the row may end
        ruled = mask.masked_fill(past, float("-inf"))
        empty = torch.isinf(ruled).all(dim=1, keepdim=True)
        return torch.where(empty, mask, ruled)

    def placed(self, grammar: Grammar) -> None:
        """This step's onset is known (`Grammar.place`): is it the closing one?"""
        if self.any:
            self.closing = (grammar.onset >= self.final) & (self.final < NEVER)

    def pitch_forbidden(self, forbidden: torch.Tensor) -> torch.Tensor:
        """The grammar's forbidden pitches (B, n_pitch), and on the closing onset every pitch
        outside the tonic triad (unless nothing would be left)."""
        if not self.any:
            return forbidden
        scores = self.profiles @ _zscore(self.hist).T  # (24, B)
        key = torch.where(self.key >= 0, self.key, scores.argmax(dim=0)[:, None])  # (B, 1)
        outside = ~self.triads[key[:, 0]] & self.closing  # (B, n_pitch)
        ruled = forbidden | outside
        return torch.where(ruled.all(dim=1, keepdim=True), forbidden, ruled)

    def add_note(self, pitch: torch.Tensor, ticks: torch.Tensor) -> None:
        """A note of pitch (B, 1) lasting `ticks` (B, 1) was made: the notes made so far choose
        the key of rows without a seed."""
        if self.any:
            pcs = (pitch + self.pitch_low).remainder(12)  # (B, 1)
            self.hist.scatter_add_(1, pcs, ticks.to(self.hist.dtype))

    def duration_mask(self, grammar: Grammar, logits: torch.Tensor) -> torch.Tensor:
        """Duration logits (B, n_duration) where the closing note must reach the bar line: the
        bins too short are forbidden (the longest bin stays if none is long enough)."""
        if not self.any:
            return logits
        short = self.duration_ticks[None, :] < (grammar.end_tick - grammar.onset)  # (B, n_dur)
        short[:, -1] = False
        return logits.masked_fill(short & self.closing, float("-inf"))


def _zscore(hist: torch.Tensor) -> torch.Tensor:
    centred = hist - hist.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-9)
