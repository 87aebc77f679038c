"""The batched decode loop: every row's seed encoded (in groups of similar length), then one note
per row per step, field by field, each sampled under the grammar, until every row is done.

Per note, everything (network, grammar, sampling, copy path) runs as tensor ops over the whole
batch on the model's device; the host reads back only how many rows are done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from engine.model.checkpoint import LoadedModel
from engine.model.copy.copying import CopyMemory, shipped_params
from engine.model.copy.lookback import LAG_BARS
from engine.model.copy.strains import plan_strains, plan_tensor, shipped_strains
from engine.model.events import DURATION, PHRASE, PITCH, POSITION, SHIFT, VELOCITY
from engine.model.generate.batch_decoder import BatchDecoder, batch_decoder
from engine.model.generate.ending import Closing
from engine.model.generate.grammar import Grammar
from engine.model.generate.request import Row
from engine.model.generate.sampling import Sampling, sample
from engine.model.lags import LagTracker
from engine.model.network import Memory, MotifSeq2Seq

COMPACT_SHARE = 4  # finished rows leave the batch once they are 1/COMPACT_SHARE of it


@dataclass
class Batch:
    """The rows being decoded, in lockstep: the network's decoder, the grammar, the sampling
    settings and the copy path's memory, one row each."""

    decoder: BatchDecoder
    grammar: Grammar
    sampling: Sampling
    copy: CopyMemory | None
    closing: Closing
    column_offsets: torch.Tensor  # (8,) added to a step's classes to make the next input
    lags: LagTracker | None  # the decoder's lag inputs (engine.model.lags); None: not read

    @classmethod
    def start(cls, lm: LoadedModel, rows: list[Row]) -> Batch:
        """Encode every row's seed and set up the decoder, the grammar and the sampling."""
        model, device = lm.model, lm.device
        B = len(rows)
        S = max(1, max(len(r.seed_events) for r in rows))
        seed = np.zeros((B, S, 6), dtype=np.int64)  # the five columns and PHRASE
        for i, r in enumerate(rows):
            seed[i, : len(r.seed_events), :5] = r.seed_events
            seed[i, : len(r.seed_events), PHRASE] = r.seed_phrase
        seed_len = torch.tensor([len(r.seed_events) for r in rows], device=device)
        style = torch.tensor([r.style for r in rows], device=device)
        key = torch.tensor([r.key for r in rows], device=device)
        memory = encode_in_groups(model, torch.from_numpy(seed).to(device), seed_len, style, key)
        decoder = batch_decoder(model, memory, style)
        grammar, sampling = Grammar(lm, rows, device), Sampling(lm, rows, device)
        copy = _copy_memory(lm, rows, torch.from_numpy(seed[..., :5]).to(device), seed_len)
        offsets = decoder.offsets
        column_offsets = torch.tensor(
            [0, offsets[PITCH], offsets[DURATION], offsets[VELOCITY], 0, 0, 0, 0], device=device
        )  # (8,) position, phrase and the extras are offset already
        closing = Closing(lm, rows, device)
        lags = None
        if decoder.reads_lags:
            cfg = lm.codec.config
            seed_t = torch.from_numpy(seed).to(device)
            lags = LagTracker(seed_t, seed_len, cfg.max_shift, cfg.max_position)
        return cls(decoder, grammar, sampling, copy, closing, column_offsets, lags)

    def select(self, keep: torch.Tensor, kept: list[int]) -> None:
        """Keep only the rows `keep` (B'',) (the same as the list `kept`)."""
        self.decoder.select(keep)
        self.grammar.select(keep)
        self.sampling.select(keep, kept)
        self.closing.select(keep)
        if self.copy is not None:
            self.copy.select(keep)
        if self.lags is not None:
            self.lags.select(keep)

    def append(
        self,
        shift: torch.Tensor,
        pitch: torch.Tensor,
        duration: torch.Tensor,
        position: torch.Tensor,
    ) -> None:
        """The note just drawn (each (B', 1), position without its offset), for the copy path's
        memory and the lag inputs."""
        if self.copy is not None:
            self.copy.append(shift, pitch, duration, position)
        if self.lags is not None:
            self.lags.append(shift, pitch)


class PitchStep(NamedTuple):
    """One step's pitch draw as a `StepObserver` sees it: the tempered logits without any
    safety net (`shift_raw`, `pitch_raw`, (B', n)), the shift with the grammar's mask
    (`shift_scaled`), the pitch with the key bias (`biased`) and with every net (`scaled`), the
    pitches the nets forbid (`forbidden`) and the grammar (what it forbids itself, done rows)."""

    grammar: Grammar
    forbidden: torch.Tensor
    shift_raw: torch.Tensor
    shift_scaled: torch.Tensor
    pitch_raw: torch.Tensor
    biased: torch.Tensor
    scaled: torch.Tensor


class StepObserver(Protocol):
    """A hook the judge passes in to see how generation draws (bench.safety_nets counts how
    often each safety net changes a note); generation itself never needs one."""

    def pitch_step(self, step: PitchStep) -> None: ...


class Segment(NamedTuple):
    """A stretch of steps between two compactions of the batch."""

    members: list[int]  # the rows (indices of the request list) in this stretch, in batch order
    made: list[torch.Tensor]  # (B', 8) events, one per step
    done: list[torch.Tensor]  # (B', 1) done flags, one per step


def decode(
    batch: Batch, n_rows: int, check_every: int, observer: StepObserver | None = None
) -> tuple[list[Segment], torch.Tensor]:
    """One note per row per step until every row is done; every `check_every` steps the host
    reads how many are, and drops them once they are a good share of the batch. Returns the
    segments and each row's first tick (B, 1), what its first shift counts from."""
    grammar = batch.grammar
    live = list(range(n_rows))  # the rows still decoding, in batch order
    segments: list[Segment] = []
    made: list[torch.Tensor] = []
    done: list[torch.Tensor] = []
    events: torch.Tensor | None = None
    t = 0
    while True:
        events = _note(batch, t, events, observer)
        if t == 0:
            first_tick = grammar.first_tick
        made.append(events)
        done.append(grammar.done)
        t += 1
        if t % check_every:
            continue
        finished = int(grammar.done.sum())
        if finished == len(live):
            break
        if finished * COMPACT_SHARE >= len(live):
            # drop the finished rows (the rest decode as before): worth its copies only once
            # a good share of the batch is done
            segments.append(Segment(live, made, done))
            keep = (~grammar.done[:, 0]).nonzero()[:, 0]  # (B'',)
            kept = keep.tolist()
            live = [live[j] for j in kept]
            made, done = [], []
            batch.select(keep, kept)
            events = events[keep]
    segments.append(Segment(live, made, done))
    return segments, first_tick


def _note(
    batch: Batch, t: int, events: torch.Tensor | None, observer: StepObserver | None
) -> torch.Tensor:
    """Step t: one note per row, field by field, each sampled under the grammar. Returns the
    (B', 8) events, the next step's input. `observer`: shown each pitch draw."""
    decoder, grammar, sampling, copy = batch.decoder, batch.grammar, batch.sampling, batch.copy
    closing = batch.closing
    offsets = decoder.offsets
    u = sampling.uniforms(t)  # (4, B', 1)
    inv_temp, top_p, last_rank = sampling.inv_temp, sampling.top_p, sampling.last_rank
    x = decoder.step(events, None if batch.lags is None else batch.lags.inputs())  # (B', 4H)

    # SHIFT (and the bar position it lands on); EOS or passing the end finishes a row
    shift_logits = decoder.logits(SHIFT, x)
    if copy is not None:
        shift_logits = copy.mixed(SHIFT, shift_logits)
    shift_mask = closing.shift_mask(grammar, grammar.shift_mask(t))
    shift_scaled = torch.addcmul(shift_mask, shift_logits, inv_temp)
    shift = sample(shift_scaled, last_rank[SHIFT], top_p, u[SHIFT])  # (B', 1)
    position = grammar.place(t, shift) + offsets[POSITION]
    closing.placed(grammar)
    phrase = grammar.phrase() + offsets[PHRASE]
    x = decoder.choose(SHIFT, x, torch.cat([shift, position, phrase], dim=1))

    # PITCH: range, repetition guards, key bias
    pitch_logits = decoder.logits(PITCH, x)
    if copy is not None:
        pitch_logits = copy.mixed(PITCH, pitch_logits, shift)
    scaled = torch.addcmul(sampling.pitch_bias, pitch_logits, inv_temp)
    forbidden = closing.pitch_forbidden(grammar.pitch_forbidden(t))
    biased = scaled.clone() if observer is not None else None
    scaled = scaled.masked_fill_(forbidden, float("-inf"))
    pitch = sample(scaled, last_rank[PITCH], top_p, u[PITCH])
    if observer is not None and biased is not None:
        raw = (shift_logits * inv_temp, pitch_logits * inv_temp)
        observer.pitch_step(
            PitchStep(grammar, forbidden, raw[0], shift_scaled, raw[1], biased, scaled)
        )
    grammar.add_pitch(t, pitch)
    x = decoder.choose(PITCH, x, pitch)

    # DURATION, VELOCITY: unconstrained (durations are clipped to the end afterwards)
    duration_logits = decoder.logits(DURATION, x)
    if copy is not None:
        duration_logits = copy.mixed(DURATION, duration_logits, shift, pitch)
    scaled = closing.duration_mask(grammar, duration_logits * inv_temp)
    duration = sample(scaled, last_rank[DURATION], top_p, u[DURATION])
    grammar.add_duration(duration)
    closing.add_note(pitch, grammar.duration_ticks.take(duration))
    batch.append(shift, pitch, duration, position - offsets[POSITION])
    x = decoder.choose(DURATION, x, duration)
    scaled = decoder.logits(VELOCITY, x) * inv_temp
    velocity = sample(scaled, last_rank[VELOCITY], top_p, u[VELOCITY])

    events = torch.cat([shift, pitch, duration, velocity, position, phrase, decoder.extras], 1)
    events += batch.column_offsets  # (B', 8)
    return events


PAD_WASTE = 1.5  # a group of seeds is encoded together while padding costs at most this share


def encode_in_groups(
    model: MotifSeq2Seq,
    seed: torch.Tensor,
    seed_len: torch.Tensor,
    style: torch.Tensor,
    key: torch.Tensor,
) -> Memory:
    """`model.encode` of seeds of very different lengths in groups of similar length (the
    encoder runs as many steps as a group's longest seed), put back together in row order."""
    lengths = seed_len.clamp_min(1).tolist()
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    for i in order:  # ascending: a group's longest seed is its last
        group = groups[-1] if groups else None
        if group is not None and lengths[i] * (len(group) + 1) <= PAD_WASTE * (
            sum(lengths[j] for j in group) + lengths[i]
        ):
            group.append(i)
        else:
            groups.append([i])
    if len(groups) == 1:
        return model.encode(seed, seed_len, style, key)
    S = seed.size(1)
    parts = []
    for group in groups:
        rows = torch.tensor(group, device=seed.device)
        width = max(lengths[j] for j in group)
        parts.append(
            (rows, model.encode(seed[rows, :width], seed_len[rows], style[rows], key[rows]))
        )
    first = parts[0][1]
    B, H = seed.size(0), first.values.size(-1)
    values = first.values.new_zeros(B, S, H)
    keys = None if first.keys is None else first.keys.new_zeros(B, S, H)
    mask = torch.zeros(B, S, dtype=torch.bool, device=seed.device)
    state = [(h.new_zeros(B, H), c.new_zeros(B, H)) for h, c in first.state]
    pointing = first.pointer_keys is not None
    ptr_keys = values.new_zeros(B, S, H) if pointing else None
    ptr_seed = torch.full((B, S, 3), -1, dtype=torch.long, device=seed.device) if pointing else None
    for rows, m in parts:
        width = m.values.size(1)
        values[rows, :width] = m.values
        if keys is not None and m.keys is not None:
            keys[rows, :width] = m.keys
        if ptr_keys is not None and ptr_seed is not None and m.pointer_keys is not None:
            assert m.pointer_seed is not None
            ptr_keys[rows, :width] = m.pointer_keys
            ptr_seed[rows, :width] = m.pointer_seed
        mask[rows, :width] = m.mask
        for (h, c), (mh, mc) in zip(state, m.state, strict=True):
            h[rows], c[rows] = mh, mc
    return Memory(
        values=values,
        keys=keys,
        mask=mask,
        state=state,
        key=model._key(key, style),
        pointer_keys=ptr_keys,
        pointer_seed=ptr_seed,
    )


def _copy_memory(
    lm: LoadedModel, rows: list[Row], seed: torch.Tensor, seed_len: torch.Tensor
) -> CopyMemory | None:
    """The copy path's memory of each row's seed; None when no row copies."""
    params = shipped_params()
    on = [r.req.knobs.copy for r in rows]
    if params.off or not any(on):
        return None
    codec = lm.codec
    sizes = (codec.n_shift, codec.n_pitch, codec.n_duration)
    # None where every row copies: multiplying by 1 changes nothing, and costs ops per note
    copying = (
        None if all(on) else torch.tensor(on, dtype=torch.float32, device=seed.device)[:, None]
    )
    memory = CopyMemory(seed, seed_len, sizes, params, rows_on=copying, n_position=codec.n_position)
    table = shipped_strains()
    bar = (memory.lookback.lags[:, 0] // LAG_BARS[0]).tolist()  # ticks per bar, read from the seed
    plans = [
        plan_strains(table, bar[i], r.seed_end, r.req.options.bars, r.rng_seed)
        if on[i] and r.req.knobs.strains
        else []
        for i, r in enumerate(rows)
    ]
    memory.lookback.plan = plan_tensor(plans, seed.device)
    return memory
