"""The copy path: what the seed (and the music so far) did after the same figure, mixed into the
model's distributions.

Folk tunes and piano pieces repeat and sequence their own figures; an LSTM that reads the seed once
hears them only through its state. The copy path looks them up. Every event so far (the seed's,
then each continuation note) is remembered by its *figure*: (pitch interval from the event
before, shift). For the next note, every seed event whose preceding figures match the latest
ones votes for what came after it there, weighted by exp(`weight` x the match length (up to
`max_match` figures) + `exact` if it also came at the same pitch as now, not transposed +
`aligned` if the note before it sat at the bar position the latest note sits at):

- the shift: the remembered event's shift;
- the pitch, given the shift just drawn: the remembered interval, applied to the last pitch (so a
  figure returns transposed, as a sequence does), voters limited to those with the same shift;
- the duration, given shift and pitch: voters with the same shift and interval.

Each field's distribution becomes (1 - lambda) x the model's + lambda x the votes', with lambda
looked up by the best voter's match: its length and whether it is exact (no voter: 0). The
lambdas, the weights and `max_match` are fitted by the likelihood of the *real* continuations of
the validation split (`python -m engine.model.train.copy_fit`), never by the figures that judge the
output (bench.judge, on the test split). It is a cache language model (Kuhn & De Mori 1990; Grave et al. 2017 for neural
models) over musical figures; see docs/seed-fidelity.md.

Only the seed votes. Letting the continuation's own notes vote too fits real continuations better
under teacher forcing (validation NLL 2.40 against 2.65), but while generating, a cache of one's
own draws feeds on itself: on 100 held-out seeds it kept the key less often (60% against 68%) and
held one pitch 4+ times in more pieces (35% against 29%); docs/history/seed-fidelity-2026-11.md has both tables.

One `CopyMemory` serves both uses: decoding (one note at a time, the drawn notes appended) and
scoring (the true notes appended, for the NLL with and without the seed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from engine.model.copy.lookback import NO_LOOKBACK, Lookback, check_mu, mix_chosen
from engine.model.copy.repeats import (
    NO_REPEAT_BIAS,
    add_repeat_bias,
    check_table,
    repeat_cell,
    seed_repeat_bin,
)
from engine.model.copy.vote import Vote, mix_logits
from engine.model.events import COPY_COLUMNS, COPY_POSITION, DURATION, PITCH, SHIFT

MAX_MATCH = 4  # default: figures compared back from the latest one (longer count as this)
MAX_MATCH_LIMIT = 16
LEVEL_SIZES = frozenset(2 * (m + 1) for m in range(1, MAX_MATCH_LIMIT + 1))
COPY_FIELDS = (SHIFT, PITCH, DURATION)
LEVELS_PER_KIND = MAX_MATCH + 1  # transposed voters: levels 0..MAX_MATCH; exact ones: + this
N_LEVELS = 2 * LEVELS_PER_KIND
_NONE = -1  # a figure that matches nothing: padding, the first event, an end
_SPAN = 256  # figure code = (interval + 128) x _SPAN + shift; intervals lie within +-127
PARAMS_PATH = Path(__file__).resolve().parents[2] / "data" / "copy-params.json"


@dataclass(frozen=True)
class CopyParams:
    """`mix[f][level]`: lambda of field f (shift, pitch, duration) by the best voter's level,
    its match length m (0..max_match), plus max_match + 1 if it is exact (at the same pitch);
    a voter weighs exp(`weight` x m + `exact` x (1 if exact) + `aligned` x (1 if the note
    before it sat at the bar position the latest note sits at)). Each row of `mix` holds
    2 x (max_match + 1) lambdas. `repeat`: the bias on the latest pitch by the seed's repeat bin
    and the current run (engine.model.copy.repeats), added after the mixing. `lookback[f][level]`: mu
    of field f by the lookback level (engine.model.copy.lookback), mixed in after the lambdas."""

    weight: float
    exact: float
    mix: tuple[tuple[float, ...], ...]
    aligned: float = 0.0
    repeat: tuple[tuple[float, ...], ...] = NO_REPEAT_BIAS
    lookback: tuple[tuple[float, ...], ...] = NO_LOOKBACK

    @property
    def max_match(self) -> int:
        return len(self.mix[0]) // 2 - 1

    def __post_init__(self) -> None:
        sizes = {len(m) for m in self.mix}
        if len(self.mix) != len(COPY_FIELDS) or len(sizes) != 1 or sizes.pop() not in LEVEL_SIZES:
            raise ValueError(
                f"mix must be {len(COPY_FIELDS)} rows of 2 x (max match + 1) lambdas, "
                f"max match 1 to {MAX_MATCH_LIMIT}"
            )
        if any(not 0.0 <= lam < 1.0 for row in self.mix for lam in row):
            raise ValueError("each lambda must lie in [0, 1)")
        if not all(map(math.isfinite, (self.weight, self.exact, self.aligned))):
            raise ValueError("weight, exact and aligned must be finite")
        check_table(self.repeat)
        check_mu(self.lookback)

    @property
    def off(self) -> bool:
        mixes = any(lam for row in self.mix + self.lookback for lam in row)
        return not mixes and not self.repeats

    @property
    def repeats(self) -> bool:
        return any(b for row in self.repeat for b in row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "exact": self.exact,
            "aligned": self.aligned,
            "mix": [list(r) for r in self.mix],
            "repeat": [list(r) for r in self.repeat],
            "lookback": [list(r) for r in self.lookback],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CopyParams:
        mix = tuple(tuple(map(float, r)) for r in d["mix"])
        aligned = float(d.get("aligned", 0.0))
        repeat = tuple(tuple(map(float, r)) for r in d.get("repeat", NO_REPEAT_BIAS))
        lookback = tuple(tuple(map(float, r)) for r in d.get("lookback", NO_LOOKBACK))
        return cls(float(d["weight"]), float(d["exact"]), mix, aligned, repeat, lookback)


NO_COPY = CopyParams(weight=0.0, exact=0.0, mix=((0.0,) * N_LEVELS,) * len(COPY_FIELDS))


@lru_cache(maxsize=1)
def shipped_params() -> CopyParams:
    """The lambdas every model decodes with: the shipped fit (made for the default model by
    `python -m engine.model.train.copy_fit`; no file: no copying). A retrained model uses them too:
    they describe how music like the corpus repeats its seed more than they describe one
    network; refit with `python -m engine.model.train.copy_fit --model NEW.pt` to check."""
    try:
        return CopyParams.from_dict(json.loads(PARAMS_PATH.read_text())["params"])
    except FileNotFoundError:
        return NO_COPY


class CopyMemory:
    """The events so far of B rows, right-aligned so every row's newest event is at `n - 1`.

    seed (B, S, 5) right-padded class indices with `seed_len` (B,) real events (0: no seed);
    `capacity`: how many more events will be appended at most (more grows the buffers);
    `n_position`: the codec's bar positions (the last is a clamp), for the lookback's bar length."""

    def __init__(
        self,
        seed: torch.Tensor,
        seed_len: torch.Tensor,
        sizes: tuple[int, int, int],
        params: CopyParams,
        capacity: int = 256,
        rows_on: torch.Tensor | None = None,
        n_position: int | None = None,
    ) -> None:
        B, S = seed.size(0), seed.size(1)
        device = seed.device
        self.sizes = sizes  # classes of shift, pitch, duration
        self.params = params
        self.mix = torch.tensor(params.mix, dtype=torch.float32, device=device)  # (3, N_LEVELS)
        self.rows_on = rows_on  # (B, 1) 1.0 where a row copies, 0.0 where not; None: all
        self.repeat = torch.tensor(params.repeat, dtype=torch.float32, device=device)
        self.repeats_on = params.repeats
        self.lookback_on = any(mu for row in params.lookback for mu in row)
        self.repeat_bin = seed_repeat_bin(seed, seed_len)  # (B,)
        pad = params.max_match + 1  # leading columns never real, so no index goes below 0
        self.pad = pad
        self.n = pad + S
        self.seed_end = self.n  # columns from here on hold the continuation (they never vote)
        width = self.n + max(1, capacity)
        # right-align: row i's seed event k lands at column n - seed_len[i] + k
        col = torch.arange(S, device=device)[None, :] + (S - seed_len)[:, None] + pad  # (B, S)
        real = torch.arange(S, device=device)[None, :] < seed_len[:, None]  # (B, S)
        col = torch.where(real, col, torch.zeros_like(col))  # padding lands on column 0
        self.event = torch.full(
            (B, width, len(COPY_COLUMNS)), _NONE, dtype=torch.int64, device=device
        )
        fields = seed[..., list(COPY_COLUMNS)].clamp_min(_NONE)  # (B, S, 4)
        fields = fields.masked_fill(~real[..., None], _NONE)
        self.event.scatter_(1, col[..., None].expand_as(fields), fields)
        self.event[:, 0] = _NONE
        self.interval = torch.full((B, width), _NONE * 1000, dtype=torch.int64, device=device)
        self.figure = torch.full((B, width), _NONE, dtype=torch.int64, device=device)
        self._figures(0, self.n)
        self._score: torch.Tensor | None = None  # `_match` at this n: scores and ranks
        self._rank = torch.empty(0)
        # What never changes once the seed is in: for each seed column j, the max_match figures
        # before it, newest first (B, W, max_match; padding columns hold no figure), and the
        # pitch and bar position of the event before it (B, W; column 0: none).
        W, most = self.seed_end, params.max_match
        before = torch.arange(W, device=device)[:, None] - 1 - torch.arange(most, device=device)
        self._before = self.figure[:, before.clamp_min(0)]  # (B, W, most)
        self._before[:, :pad] = _NONE - 1  # never equal to a figure, nor to "no figure"
        pitch_position = [PITCH, COPY_POSITION]
        prev = torch.cat(
            [self.event[:, :1, pitch_position], self.event[:, : W - 1, pitch_position]], 1
        )
        prev[:, 0] = _NONE - 1
        self._prev_pitch, self._prev_position = prev[..., 0].contiguous(), prev[..., 1].contiguous()
        self._constants()
        # the largest shift class and bar position are clamped values (engine.model.copy.lookback)
        top = None if n_position is None else n_position - 1
        self.lookback = Lookback(self.event, self.n, params.lookback, sizes[0] - 2, top)

    def _constants(self) -> None:
        """What the votes need per note but never changes, made once per request: per note the
        copy path runs on tiny tensors, where each op's overhead is the cost. The seed's columns
        never change, nor who can vote there."""
        W, most, sizes = self.seed_end, self.params.max_match, self.sizes
        self._seed_shift = self.event[:, :W, SHIFT]
        self._seed_interval = self.interval[:, :W]  # the seed's columns: written once
        self._interval_ok = self._seed_interval > _NONE * 1000
        self._shift_ok, self._shift_at = _voting(self._seed_shift, sizes[SHIFT])
        self._duration_ok, self._duration_at = _voting(self.event[:, :W, DURATION], sizes[DURATION])
        # by the best voter's rank 2m + e, and one more entry for -1 (no voter): its level, and
        # each field's lambda by that level (0 for none)
        level = [r // 2 + (most + 1) * (r % 2) for r in range(2 * most + 2)]
        self._level = torch.tensor(level + [-1], device=self.mix.device)
        self._lam = torch.cat([self.mix[:, level], self.mix.new_zeros(3, 1)], dim=1)
        self._lam_rows = tuple(self._lam)  # each field's row, for `take`
        # a voter's score by 2 x its rank + a (aligned): the float32 ops per voter, made once
        key = torch.arange(4 * (most + 1), device=self.mix.device)
        p = self.params
        score = p.weight * (key // 4).float() + p.exact * (key // 2 % 2).float()
        self._scores = score + p.aligned * (key % 2).float()

    # --- memory ---------------------------------------------------------------------------------
    def _figures(self, start: int, stop: int) -> None:
        """Intervals and figure codes of columns start..stop-1 (from the events before them)."""
        lo = max(1, start)
        pitch = self.event[:, lo - 1 : stop, PITCH]  # (B, stop - lo + 1)
        real = pitch >= 0
        ok = real[:, 1:] & real[:, :-1]
        interval = torch.where(ok, pitch.diff(dim=1), _NONE * 1000)
        shift = self.event[:, lo:stop, SHIFT]
        # the figure code, (interval + 128) x _SPAN + shift
        code = torch.add(shift, interval, alpha=_SPAN) + 128 * _SPAN
        figure = torch.where(ok & (shift >= 0), code, _NONE)
        self.interval[:, lo:stop] = interval
        self.figure[:, lo:stop] = figure

    def append(
        self,
        shift: torch.Tensor,
        pitch: torch.Tensor,
        duration: torch.Tensor,
        position: torch.Tensor,
    ) -> None:
        """Remember one event per row: (B, 1) classes each; IGNORE (< 0) or an end (EOS) remember
        a figure that matches nothing."""
        if self.n >= self.event.size(1):
            self._grow()
        ev = torch.cat([shift, pitch, duration, position], dim=1)  # (B, 4)
        eos = shift >= self.sizes[0] - 1  # the shift's last class is EOS
        ev = torch.where(eos | (ev < 0), _NONE, ev)
        self.event[:, self.n] = ev
        self.n += 1
        self._figures(self.n - 1, self.n)
        self.lookback.append(self.n - 1, ev)
        self._score = None

    def _grow(self) -> None:
        extra = self.event.size(1)
        self.event = torch.cat([self.event, torch.full_like(self.event, _NONE)[:, :extra]], dim=1)
        self.interval = torch.cat([self.interval, torch.full_like(self.interval, _NONE * 1000)], 1)
        self.figure = torch.cat([self.figure, torch.full_like(self.figure, _NONE)], dim=1)

    def select(self, rows: torch.Tensor) -> None:
        self.event, self.interval = self.event[rows], self.interval[rows]
        self.figure = self.figure[rows]
        self.rows_on = None if self.rows_on is None else self.rows_on[rows]
        self._before, self._seed_interval = self._before[rows], self._seed_interval[rows]
        self._prev_pitch, self._prev_position = self._prev_pitch[rows], self._prev_position[rows]
        self.repeat_bin = self.repeat_bin[rows]
        self._seed_shift, self._interval_ok = self._seed_shift[rows], self._interval_ok[rows]
        self._shift_ok, self._shift_at = self._shift_ok[rows], self._shift_at[rows]
        self._duration_ok, self._duration_at = self._duration_ok[rows], self._duration_at[rows]
        self.lookback.select(rows)
        self._score = None

    def mixed(
        self,
        field: int,
        logits: torch.Tensor,
        shift: torch.Tensor | None = None,
        pitch: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The field's logits (B, n) with the votes mixed in: shift first, then pitch given the
        shift (B, 1), then duration given shift and pitch."""
        if field == SHIFT:
            votes, lam, _ = self.shift_votes()
        elif field == PITCH:
            assert shift is not None
            votes, lam, _ = self.pitch_votes(shift)
        else:
            assert shift is not None and pitch is not None
            votes, lam, _ = self.duration_votes(shift, pitch)
        if self.rows_on is not None:
            lam = lam * self.rows_on
        mixed = mix_logits(logits, votes, lam)
        if self.lookback_on:
            i = COPY_FIELDS.index(field)
            chosen, mu, _ = self.lookback.choice(self.event, self.n, i, self.sizes[i], shift, pitch)
            mixed = mix_chosen(mixed, chosen, mu if self.rows_on is None else mu * self.rows_on)
        if field != PITCH or shift is None or not self.repeats_on:
            return mixed
        cell, last = self.repeat_cell(shift)
        if self.rows_on is not None:
            cell = torch.where(self.rows_on[:, 0] > 0, cell, -1)
        return add_repeat_bias(mixed, self.repeat, cell, last)

    def lookback_votes(
        self, field: int, shift: torch.Tensor | None = None, pitch: torch.Tensor | None = None
    ) -> Vote:
        """The lookback's vote (B, n) for `field`, its mu (B, 1) and level (B,);
        engine.model.copy.lookback."""
        i = COPY_FIELDS.index(field)
        return self.lookback.votes(self.event, self.n, i, self.sizes[i], shift, pitch)

    def repeat_cell(self, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The repeat cell (B,) of the note about to be drawn with `shift` (B, 1), and the latest
        pitch (B,); see engine.model.copy.repeats."""
        return repeat_cell(self.event, self.n, shift, self.repeat_bin, self.sizes[0])

    # --- votes ----------------------------------------------------------------------------------
    def _match(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For each seed event j (B, W = seed_end): its voting score (log weight), weight x m +
        exact x e + aligned x a, and its rank 2m + e; m: how many figures before it (up to
        max_match) equal the latest ones, figure[j-1-k] == figure[n-1-k] for k < m; e: the
        match is exact (the event before j has the latest event's pitch); a: that event sat at
        the latest event's bar position. Cached per note."""
        if self._score is not None:
            return self._score, self._rank
        n, most = self.n, self.params.max_match
        mine = self.figure[:, n - most : n].flip(1)  # (B, most) the latest figures, newest first
        same = (self._before == mine[:, None, :]) & (mine != _NONE)[:, None, :]  # (B, W, most)
        length = same.long().cumprod(dim=2).sum(dim=2)  # (B, W) the run of equal figures
        last = self.event[:, n - 1]  # (B, 4) the latest event
        exact = (self._prev_pitch == last[:, PITCH : PITCH + 1]) & (length > 0)
        # aligned: the note before j sat at the bar position the latest note sits at
        aligned = self._prev_position == last[:, COPY_POSITION : COPY_POSITION + 1]
        self._rank = 2 * length + exact
        self._score = self._scores.take(2 * self._rank + aligned)
        return self._score, self._rank

    def _votes(self, field: int, at: torch.Tensor, ok: torch.Tensor, n_classes: int) -> Vote:
        """Weighted votes (B, n_classes) of the seed's events that can vote, `ok` (B, W), each for
        its class `at` (B, W; clamped into range), normalised, each row's lambda (B, 1) by its best
        voter and that voter's level (B, 1). Only the seed votes (the module's docstring says
        why)."""
        score, rank = self._match()
        # weights relative to this field's best voter, so none underflows to 0 for lack of a
        # better voter that cannot vote here; exp(-inf) = 0 for the rest
        score = torch.where(ok, score, float("-inf"))
        top = score.amax(dim=1, keepdim=True).clamp_min(-1e30)  # a row without voters: finite
        weight = torch.exp(score - top)
        votes = torch.zeros(at.size(0), n_classes, device=at.device)
        votes.scatter_add_(1, at, weight)
        total = votes.sum(dim=1, keepdim=True)
        # the best voter: longest match first, exact before transposed at the same length
        best = torch.where(ok, rank, -1).amax(dim=1, keepdim=True)  # (B, 1)
        lam = self._lam_rows[COPY_FIELDS.index(field)].take(best)
        return Vote(votes / total.clamp_min(1e-30), lam, self._level.take(best))

    def shift_votes(self) -> Vote:
        return self._votes(SHIFT, self._shift_at, self._shift_ok, self.sizes[SHIFT])

    def pitch_votes(self, shift: torch.Tensor) -> Vote:
        """Given this note's shift (B, 1): the remembered intervals after that shift, applied to
        the last pitch."""
        n, n_pitch = self.n, self.sizes[PITCH]
        last = self.event[:, n - 1 : n, PITCH]  # (B, 1)
        values = last + self._seed_interval
        voters = (self._seed_shift == shift) & self._interval_ok & (last >= 0)
        ok = voters & (values >= 0) & (values < n_pitch)
        return self._votes(PITCH, values.clamp(0, n_pitch - 1), ok, n_pitch)

    def duration_votes(self, shift: torch.Tensor, pitch: torch.Tensor) -> Vote:
        """Given this note's shift and pitch (B, 1): the durations remembered after the same
        shift and interval."""
        n = self.n
        last = self.event[:, n - 1 : n, PITCH]
        same = (self._seed_shift == shift) & (self._seed_interval == pitch - last)
        ok = same & (last >= 0) & self._duration_ok
        return self._votes(DURATION, self._duration_at, ok, self.sizes[DURATION])


def _voting(values: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of `values` (B, W) can vote (a class below n_classes), and each clamped into range."""
    return (values >= 0) & (values < n_classes), values.clamp(0, n_classes - 1)
