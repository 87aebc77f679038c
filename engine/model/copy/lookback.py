"""Lookback: what the seed played whole bars ago, at the same moment of the bar.

Folk tunes are built of strains that come back: a reel's first four bars return four or eight
bars later, often note for note. The figure matching of the copy path (engine.model.copy.copying)
finds a figure only once the continuation has already started it, and never votes for a seed's
first notes (nothing comes before them). Lookback asks the other way round: for each lag of 2, 4
or 8 bars, which seed note sat exactly that many bars before the note about to be drawn (same
onset tick, same place in its chord)? It votes for that note's shift, pitch and duration (the
same pitch, not transposed: a strain returns as it was).

How far to trust a lag is read from the music so far: its *phase*, how many of the latest notes
(up to `PHASE`) equal, pitch and onset, the notes that lag earlier in the seed. The lag with the
longest phase votes (the shorter lag on a tie); its level is (lag, phase), and each field's
distribution becomes (1 - mu) x the copy path's + mu x the vote, mu looked up by field and level.
The mus are fitted, like the copy path's lambdas, by the likelihood of the validation split's
real continuations (`python -m engine.model.train.copy_fit`). Only the seed votes, as in the copy path.

Bar lengths are read from the seed's own bar positions: where a shift crosses a bar line, the
previous position plus the shift minus the new position is the bar's length in ticks. A seed that
crosses no bar line has no lookback.
"""

from __future__ import annotations

import torch

from engine.model.copy.vote import Vote
from engine.model.events import COPY_POSITION, DURATION, PITCH, SHIFT

LAG_BARS = (2, 4, 8)
PHASE = 4  # the latest notes compared with the lagged ones
LOOKBACK_LEVELS = len(LAG_BARS) * (PHASE + 1)  # level: lag index x (PHASE + 1) + phase
NO_LOOKBACK: tuple[tuple[float, ...], ...] = ((0.0,) * LOOKBACK_LEVELS,) * 3
# the weight of a planned strain's vote (engine.model.copy.strains): a replayed bar is the
# seed's, bar the odd note
PLAN_MU = 0.9
_NEVER = -(10**12)  # the time of a column that is no note
RANKS = 64  # chord ranks kept apart in the search keys (a larger chord shares the last)


def check_mu(table: tuple[tuple[float, ...], ...]) -> None:
    """ValueError unless `table` is 3 rows (shift, pitch, duration) of LOOKBACK_LEVELS in [0, 1)."""
    if len(table) != 3 or any(len(row) != LOOKBACK_LEVELS for row in table):
        raise ValueError(f"lookback must be 3 rows of {LOOKBACK_LEVELS} mus")
    if any(not 0.0 <= mu < 1.0 for row in table for mu in row):
        raise ValueError("each lookback mu must lie in [0, 1)")


def mix_chosen(logits: torch.Tensor, chosen: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """engine.model.copy.vote.mix_logits of a one-hot vote for `chosen` (B,; -1: none, where
    mu (B, 1) is 0), the same numbers bit for bit (adding mu x 0 adds +0), without the one-hot."""
    p = torch.softmax(logits.float(), dim=-1) * (1 - mu)
    p.scatter_add_(1, chosen.clamp_min(0)[:, None], mu)
    log = torch.log(p)
    return torch.where(mu > 0, log if log.dtype == logits.dtype else log.to(logits.dtype), logits)


def chord_ranks(shift: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(B, N) each note's place in its chord: 0, 1, 2, ... in event order (the distance to the
    chord's first note; a note with shift 0 after a note is in the chord)."""
    after = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    chord = real & (shift == 0) & after
    column = torch.arange(shift.size(1), device=shift.device).expand_as(shift)
    first = torch.where(chord, 0, column).cummax(dim=1).values
    return column - first


def bar_ticks(
    event: torch.Tensor, stop: int, max_shift: int | None = None, max_position: int | None = None
) -> torch.Tensor:
    """(B,) each row's bar length in ticks, read from columns before `stop` of `event`
    (B, W, 4: shift, pitch, duration, bar position; -1 where no note); 0 where no bar line is
    crossed. Pairs whose positions reach `max_position` (clamped in bars that long) or whose
    shift is `max_shift` (a longer gap, clamped) tell nothing and are skipped."""
    prev, cur = event[:, : stop - 1], event[:, 1:stop]
    prev_position, position = prev[..., COPY_POSITION], cur[..., COPY_POSITION]
    real = (prev[..., PITCH] >= 0) & (cur[..., PITCH] >= 0) & (cur[..., SHIFT] >= 0)
    if max_shift is not None:
        real = real & (cur[..., SHIFT] < max_shift)
    if max_position is not None:
        real = real & (prev_position < max_position) & (position < max_position)
    length = prev_position + cur[..., SHIFT] - position  # 0 within a bar, k bars across k lines
    length = torch.where(real & (length > 0), length, 10**9)
    found = length.amin(dim=1) if length.size(1) else torch.full_like(event[:, 0, 0], 10**9)
    return torch.where(found < 10**9, found, 0)


class Lookback:
    """The times and chord ranks of every column of a CopyMemory's events, and the votes of the
    seed's notes whole bars back. Columns before `seed_end` are the seed's; their (time, rank)
    keys ascend, so a lagged note is found by binary search."""

    def __init__(
        self,
        event: torch.Tensor,
        n: int,
        mu: tuple[tuple[float, ...], ...],
        max_shift: int | None = None,
        max_position: int | None = None,
    ) -> None:
        B, width = event.size(0), event.size(1)
        device = event.device
        self.seed_end = n
        self.mu = torch.tensor(mu, dtype=torch.float32, device=device)  # (3, LOOKBACK_LEVELS)
        bar = bar_ticks(event, n, max_shift, max_position)
        self.lags = bar[:, None] * torch.tensor(LAG_BARS, device=device)  # (B, L)
        self.time = torch.full((B, width), _NEVER, dtype=torch.int64, device=device)
        self.rank = torch.zeros((B, width), dtype=torch.int64, device=device)
        shift = event[:, :n, SHIFT]
        real = event[:, :n, PITCH] >= 0
        self.time[:, :n] = torch.where(real, torch.cumsum(shift.clamp_min(0), dim=1), _NEVER)
        self.rank[:, :n] = chord_ranks(shift, real)
        self.keys = self.time[:, :n] * RANKS + self.rank[:, :n].clamp_max(RANKS - 1)  # (B, W)
        # the seed's pitches by column + 1, -1 at column 0: what "no column" (-1) reads
        self.seed_pitch = torch.cat(
            [torch.full_like(event[:, :1, PITCH], -1), event[:, :n, PITCH]], 1
        )
        # constants per request, made once rather than per note (the copy path runs three times
        # a note, on tiny tensors, where each op's overhead is what costs)
        self._order = torch.arange(self.lags.size(1), 0, -1, device=device)  # `_pick`'s tie order
        self._lag_index = torch.arange(self.lags.size(1), device=device)
        bar = self.lags[:, :1] // LAG_BARS[0]  # (B, 1) ticks per bar; 0: unknown
        self._bar_known, self._bar = bar > 0, bar.clamp_min(1)
        self._lag_known = self.lags > 0  # (B, L) a row without a bar length has no lagged notes
        # mu by field and level, a 0 after the last level: level -1 (no voter) indexes it
        self._mu = torch.cat([self.mu, self.mu.new_zeros(3, 1)], dim=1)
        self._mu_rows = tuple(self._mu)  # each field's row, for `take`
        # (field, n_classes) -> (B, 1 + W) the seed's values that can vote, by column + 1 (-1:
        # none), so that "no column" (-1) reads -1 at column 0; see `_table`
        self._tables: dict[tuple[int, int], torch.Tensor] = {}
        self._found: tuple[int, torch.Tensor] | None = None  # `_grow_phase`'s (column, `_find`)
        self.phase = torch.zeros_like(self.lags)  # (B, L) grown note by note from the seed's end
        self._ranked: tuple[torch.Tensor, torch.Tensor] | None = None  # `_pick`'s, per phase
        for col in range(max(0, n - PHASE), n):
            self._grow_phase(col, event[:, col])
        # (shift, `_lagged_then`) of the pitch, for the duration
        self._then: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        # (B, bars): per bar from tick 0, the LAG_BARS index the strain plan replays there, or -1
        # (engine.model.copy.strains); None: no plan
        self.plan: torch.Tensor | None = None

    def _grow_phase(self, column: int, event: torch.Tensor) -> None:
        """`phase`, (B, L): how many of the latest notes (up to PHASE) equal the seed's notes a
        lag earlier, pitch and onset; updated for the note (B, 4) at `column`."""
        rank = self.rank[:, column : column + 1]  # (B, 1), for every lag
        at = self._find(self.time[:, column : column + 1] - self.lags, rank)
        self._found = (column, at)  # the shift's vote after this note looks up the same notes
        pitch = self.seed_pitch.gather(1, at + 1)  # -1 where no note was found
        same = (pitch == event[:, PITCH, None]) & (pitch >= 0)
        self.phase = torch.where(same, (self.phase + 1).clamp_max(PHASE), 0)
        self._ranked = None

    def append(self, column: int, event: torch.Tensor) -> None:
        """The time and rank of the event (B, 4) just written at `column`."""
        if column >= self.time.size(1):
            extra = self.time.size(1)
            self.time = torch.cat([self.time, torch.full_like(self.time, _NEVER)[:, :extra]], 1)
            self.rank = torch.cat([self.rank, torch.zeros_like(self.rank)[:, :extra]], 1)
        real = event[:, PITCH] >= 0
        before = self.time[:, column - 1]
        shift = event[:, SHIFT].clamp_min(0)
        self.time[:, column] = torch.where(real & (before > _NEVER), before + shift, _NEVER)
        chord = real & (event[:, SHIFT] == 0)
        self.rank[:, column] = torch.where(chord, self.rank[:, column - 1] + 1, 0)
        self._grow_phase(column, event)
        self._then = None

    def select(self, rows: torch.Tensor) -> None:
        self.time, self.rank, self.lags = self.time[rows], self.rank[rows], self.lags[rows]
        self.keys, self.seed_pitch, self.phase = (
            self.keys[rows],
            self.seed_pitch[rows],
            self.phase[rows],
        )
        self.plan = None if self.plan is None else self.plan[rows]
        self._bar_known, self._bar = self._bar_known[rows], self._bar[rows]
        self._lag_known, self._ranked = self._lag_known[rows], None
        self._tables = {k: t[rows] for k, t in self._tables.items()}
        self._found = None if self._found is None else (self._found[0], self._found[1][rows])
        self._then = None

    def _find(self, time: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """(B, L) the seed's column of the note at `time` (B, L) with chord rank `rank` (B, L or 1);
        -1 where there is none (or the row has no bar length)."""
        key = time * RANKS + rank.clamp_max(RANKS - 1)
        at = torch.searchsorted(self.keys, key).clamp_max(self.seed_end - 1)
        found = (self.keys.gather(1, at) == key) & self._lag_known & (time > _NEVER // 2)
        return torch.where(found, at, -1)

    def votes(
        self,
        event: torch.Tensor,
        n: int,
        field: int,
        n_classes: int,
        shift: torch.Tensor | None = None,
        pitch: torch.Tensor | None = None,
    ) -> Vote:
        """One field's lookback vote (B, n_classes, one-hot or all 0), mu (B, 1) and level (B,;
        -1: none): `choice`'s, its class one-hot."""
        chosen, mu, level = self.choice(event, n, field, n_classes, shift, pitch)
        # one-hot at `chosen`; -1 (no vote) lands in an extra last column, cut off
        vote = torch.zeros(event.size(0), n_classes + 1, device=event.device)
        vote.scatter_(1, (chosen % (n_classes + 1))[:, None], 1.0)
        return Vote(vote[:, :n_classes], mu, level)

    def choice(
        self,
        event: torch.Tensor,
        n: int,
        field: int,
        n_classes: int,
        shift: torch.Tensor | None = None,
        pitch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One field's lookback vote: the class voted for (B,; -1: none, where mu is 0), mu
        (B, 1) and level (B,; -1: none); `field` 0 shift, 1 pitch (given `shift` (B, 1)), 2 duration (given shift and
        `pitch` (B, 1)). In a bar the strain plan replays, its lag votes with PLAN_MU."""
        now, rank = self.time[:, n - 1 : n], self.rank[:, n - 1 : n]  # (B, 1)
        if field == SHIFT:  # the shift of the note after the lagged one (a note of the seed's)
            if self._found is not None and self._found[0] == n - 1:
                at = self._found[1]
            else:
                at = self._find(now - self.lags, rank)
            value = self._table(event, SHIFT, n_classes).gather(1, at + 1)
        else:
            assert shift is not None
            if self._then is None or self._then[0] is not shift:  # pitch; duration reuses it
                self._then = (shift, *self._lagged_then(now, rank, shift))
            _, column, planned = self._then
            value = self._table(event, field, n_classes).gather(1, column)
            if field == DURATION:
                assert pitch is not None
                same = self._table(event, PITCH, -1).gather(1, column) == pitch
                value = torch.where(same, value, -1)
        chosen, level = self._pick(value)
        mu = self._mu_rows[field].take(level[:, None])
        if self.plan is not None:  # a planned strain: its lag votes, with PLAN_MU
            if field == SHIFT:  # the next lagged onset, even across the seed's first bar line
                value = self._ahead(now, n_classes)
                planned = self._planned(now + value)
            assert planned is not None
            planned = planned & (value >= 0)  # (B, L)
            on = planned.any(dim=1)
            pick = planned.long().argmax(dim=1, keepdim=True)
            chosen = torch.where(on, value.gather(1, pick)[:, 0], chosen)
            mu = torch.where(on[:, None], PLAN_MU, mu)
        return chosen, mu, level

    def _lagged_then(
        self, now: torch.Tensor, rank: torch.Tensor, shift: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For the note about to sound `shift` (B, 1) after `now` (B, 1; the latest note's chord
        rank `rank`): each lag's seed column + 1 (B, L; 0: none, as `_table` reads), and
        whether the strain plan replays each lag in its bar (B, L; None: no plan)."""
        rank_then = torch.where(shift == 0, rank + 1, 0)  # (B, 1), for every lag
        at = self._find(now + shift - self.lags, rank_then)
        planned = None if self.plan is None else self._planned(now + shift)
        return at + 1, planned

    def _table(self, event: torch.Tensor, field: int, n_classes: int) -> torch.Tensor:
        """(B, 1 + W) the seed's `field` (SHIFT: the shift of the note after) at column j + 1 of
        the seed's columns j of `event` (which never change), -1 where it is none or not below
        `n_classes` (-1: any), and at column 0; made once per request."""
        table = self._tables.get((field, n_classes))
        if table is None:
            W = self.seed_end
            values = event[:, :W, field]
            if field == SHIFT:  # the next note's: none after the last
                values = torch.cat([values[:, 1:], torch.full_like(values[:, :1], -1)], 1)
            none = torch.full_like(values[:, :1], -1)
            table = torch.cat([none, values], dim=1)
            if n_classes >= 0:
                table = torch.where(table < n_classes, table, -1)
            self._tables[(field, n_classes)] = table
        return table

    def _ahead(self, now: torch.Tensor, n_classes: int) -> torch.Tensor:
        """(B, L) for each lag, the shift from `now` (B, 1) to the seed's first onset after
        now - lag, moved on by the lag: what comes next when the tune replays the seed from that
        lag (the exact lagged note need not exist: the seed's first note has none before it);
        -1 where there is none."""
        lagged = now - self.lags  # (B, L)
        at = torch.searchsorted(self.keys, (lagged + 1) * RANKS).clamp_max(self.seed_end - 1)
        time = self.time.gather(1, at)
        ok = (time > lagged) & self._lag_known & (time > _NEVER // 2)
        ahead = time - lagged
        return torch.where(ok & (ahead < n_classes), ahead, -1)

    def _planned(self, onset: torch.Tensor) -> torch.Tensor:
        """(B, L): whether the strain plan replays each lag in the bar of `onset` (B, L, or B, 1
        for one onset for all lags)."""
        assert self.plan is not None
        index = torch.where(self._bar_known, onset // self._bar, -1)
        inside = (index >= 0) & (index < self.plan.size(1))
        lag = self.plan.gather(1, index.clamp(0, self.plan.size(1) - 1))
        return inside & (lag == self._lag_index)

    def _pick(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lag that votes: among lags with a value (B, L; -1: none, else a class), the longest
        phase, the shorter lag on a tie. Returns each row's voted class (B,) and level (B,)
        (-1: none)."""
        if self._ranked is None:  # once per note: each lag's score if it votes, and its level
            L = value.size(1)
            score = self.phase * (L + 1) + self._order  # >= 1; shorter lags first on a tie
            self._ranked = (score, self._lag_index * (PHASE + 1) + self.phase)
        score, level = self._ranked
        best = torch.where(value >= 0, score, -1).argmax(dim=1, keepdim=True)  # (B, 1)
        chosen = value.gather(1, best)[:, 0]  # -1 where no lag has a value
        return chosen, torch.where(chosen >= 0, level.gather(1, best)[:, 0], -1)
