"""How often each safety net changes a generated note: a `StepObserver` the judge passes to
generation (engine.model.generate.decode), so the decode loop itself keeps no accounting."""

from __future__ import annotations

import torch

from engine.model.generate.decode import PitchStep
from engine.model.generate.sampling import changed_share

SAFETY_NETS = ("grammar", "repetition guard", "key bias")


class SafetyNetCounts:
    """How often each safety net changes a generated note, summed over the generations it was
    passed to. Per note, a net's share is the total variation distance between the model's
    tempered distribution with the net and without it (the other nets on): the least share of
    notes that must differ between the two, however the draws are paired. Grammar: the shift
    mask, the pitch range and no doubled chord note (either field); repetition guard:
    MAX_REPEATS and the distinct-pitch window; key bias: the out-of-scale penalty and tonal
    gravity."""

    def __init__(self) -> None:
        self._sums: torch.Tensor | None = None  # (1 + nets,): live notes, then each net's share

    def pitch_step(self, step: PitchStep) -> None:
        changed = _changed(step)
        self._sums = changed if self._sums is None else self._sums + changed

    @property
    def notes(self) -> int:
        return 0 if self._sums is None else round(float(self._sums[0]))

    @property
    def changed(self) -> dict[str, float]:
        sums = [0.0] * len(SAFETY_NETS) if self._sums is None else self._sums[1:].tolist()
        return dict(zip(SAFETY_NETS, sums, strict=True))

    def rates(self) -> dict[str, float]:
        notes = self.notes
        return {k: v / notes if notes else float("nan") for k, v in self.changed.items()}


def _changed(step: PitchStep) -> torch.Tensor:
    """(1 + len(SAFETY_NETS),) float64: this step's live rows, and the share of a note each net
    changed, summed over them."""
    inf = float("-inf")
    grammar, forbidden, biased, scaled = step.grammar, step.forbidden, step.biased, step.scaled
    shift_tv = changed_share(step.shift_raw, step.shift_scaled)  # the grammar's shift mask
    hard = grammar.outside | grammar.chord_kept  # the grammar's part of `forbidden`
    pitch_tv = changed_share(biased.masked_fill(forbidden & ~hard, inf), scaled)
    changed = [
        1 - (1 - shift_tv) * (1 - pitch_tv),  # grammar: shift or pitch
        changed_share(biased.masked_fill(hard, inf), scaled),  # repetition guard
        changed_share(step.pitch_raw.masked_fill(forbidden, inf), scaled),  # key bias
    ]
    alive = ~grammar.done  # (B', 1)
    parts = [alive.sum(0)] + [torch.where(alive, c, 0.0).sum(0) for c in changed]
    return torch.cat(parts).double()
