"""Continue a seed melody with a trained model: stateful, batched, reproducible sampling.

The encoder reads each seed once; then one decoder step per note, every row of a batch with its
own seed, length, temperature and random generator, stopping on its own. A grammar keeps the
output well formed (no end before the bars are filled, pitches in range, no stuck notes) and a soft
bias keeps the seed's key. Returns the continuation only, in the seed's timeline.

Per note, everything (network, grammar, sampling) runs as tensor ops over the whole batch on the
model's device; the host reads back only how many rows are done.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel
from engine.model.copying import CopyMemory, copy_params_of
from engine.model.network import DURATION, PITCH, POSITION, SHIFT, VELOCITY, Memory, MotifSeq2Seq
from engine.model.style_priors import draw_setting
from engine.music.keys import MAJOR_PROFILE as _MAJOR_PROFILE
from engine.music.keys import MAJOR_SCALE as _MAJOR_SCALE
from engine.music.keys import MINOR_PROFILE as _MINOR_PROFILE
from engine.music.keys import MINOR_SCALE_WITH_LEADING_NOTE as _MINOR_SCALE
from engine.music.keys import best_key as _best_key
from engine.music.keys import relative_key
from engine.music.notes import Note, Piece

log = logging.getLogger(__name__)

KEY_PENALTY = 1.0  # logits subtracted from pitch classes outside the seed's scale
# Tonal gravity: logits added to each pitch class, gravity x log of the key's Krumhansl-Kessler
# profile (0 for the tonic, about -1 for the weakest degree at gravity 1). Off by default since
# motif-default-v3: judged by an estimator it never steers by (music21's Aarden-Essen, 100 held-out
# seeds, docs/seed-fidelity.md), gravity 0.75 kept the key no better (64% against 66% at 0) and
# raised the continuations holding one pitch 4+ times from 38% to 47% (real music: 15%).
KEY_GRAVITY = 0.0
PITCH_MARGIN = 12  # generated pitches stay within the seed's range widened by this much
MAX_REPEATS = 4  # the same pitch at most this many times in a row
DISTINCT_WINDOW = 32  # any this many consecutive generated notes ...
MIN_DISTINCT = 3  # ... hold at least this many distinct pitches
MAX_CHORD = 6  # notes sharing one onset
MAX_SEED_NOTES = 256  # the encoder reads the seed's last notes only
MAX_BARS = 1024
CHUNK = 64  # steps of uniforms drawn at once from each row's generator
CHECK_EVERY = 8  # on a GPU, steps between reads of how many rows are done (a host sync)
COMPACT_SHARE = 4  # finished rows leave the batch once they are 1/COMPACT_SHARE of it


@dataclass(frozen=True)
class GenerationRequest:
    seed: Piece | None
    bars: int
    style: str | None = None  # None: the seed's style if it has one, else "none"
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0  # 0: off
    rng_seed: int | None = None  # None: a fresh one (written to the result's meta["rng_seed"])
    program: int | None = None  # None: the seed's
    tempo_bpm: float | None = None  # None: the seed's
    key_penalty: float = KEY_PENALTY
    key_gravity: float = KEY_GRAVITY
    copy: bool = True  # the copy path (engine.model.copying), with the model's fitted lambdas


MIN_KEY_NOTES = 3  # fewer seed notes: key class 0 ("unknown")


def estimate_key(piece: Piece) -> tuple[int, str] | None:
    """(tonic pitch class, "major" | "minor") by Krumhansl-Schmuckler on duration-weighted
    pitch classes; None for a piece without notes."""
    pitches = np.array([n.pitch for n in piece.notes], dtype=np.int64)
    weights = np.maximum(np.array([n.duration for n in piece.notes], dtype=np.float64), 1e-3)
    best = _best_key(np.bincount(pitches % 12, weights=weights, minlength=12))
    return None if best is None else (best % 12, "major" if best < 12 else "minor")


def seed_key(events: np.ndarray, codec) -> int:
    """The model's key class of seed events (N, 5): 0 = unknown (fewer than MIN_KEY_NOTES
    notes), 1 + tonic for major keys, 13 + tonic for minor ones. Training computes it on each
    (transposed) seed window, generation on the seed it encodes."""
    if len(events) < MIN_KEY_NOTES:
        return 0
    pcs = (events[:, PITCH] + codec.config.pitch_low) % 12
    ticks = np.asarray(codec.config.duration_bins, dtype=np.float64)[events[:, DURATION]]
    best = _best_key(np.bincount(pcs, weights=ticks, minlength=12))
    return 0 if best is None else 1 + best


N_KEY = 25  # key classes of `seed_key`


def key_profile_bias(tonic: int, mode: str, gravity: float) -> np.ndarray:
    """(12,) logits per pitch class (C first) that pull towards the key's tonal hierarchy:
    gravity x log(profile / profile's maximum), so 0 for the tonic and negative elsewhere."""
    profile = np.roll(_MAJOR_PROFILE if mode == "major" else _MINOR_PROFILE, tonic)
    return (gravity * np.log(profile / profile.max())).astype(np.float32)


def key_of_class(key: int) -> tuple[int, str] | None:
    """The (tonic, mode) of a model key class (see `seed_key`); None for 0 (unknown)."""
    if not 1 <= key <= 24:
        return None
    return (key - 1) % 12, "major" if key <= 12 else "minor"


def scale_pitch_classes(piece: Piece, key: tuple[int, str] | None = None) -> frozenset[int]:
    """The estimated key's scale (or `key`'s), plus every pitch class the seed itself uses
    (modes, accidentals)."""
    key = key or estimate_key(piece)
    if key is None:
        return frozenset(range(12))
    tonic, mode = key
    steps = _MAJOR_SCALE if mode == "major" else _MINOR_SCALE
    return frozenset((tonic + s) % 12 for s in steps) | {n.pitch % 12 for n in piece.notes}


def _check(req: GenerationRequest) -> None:
    if not 1 <= req.bars <= MAX_BARS:
        raise BadParams(f"bars must be between 1 and {MAX_BARS}, not {req.bars}")
    if not 0.0 < req.temperature <= 10.0:
        raise BadParams(f"temperature must be above 0 (and at most 10), not {req.temperature}")
    if not 0.0 < req.top_p <= 1.0:
        raise BadParams(f"top_p must be in (0, 1], not {req.top_p}")
    if req.top_k < 0:
        raise BadParams(f"top_k must be 0 (off) or positive, not {req.top_k}")
    if not 0 <= req.key_penalty <= 100:
        raise BadParams(f"key_penalty must be between 0 and 100, not {req.key_penalty}")
    if not 0 <= req.key_gravity <= 10:
        raise BadParams(f"key_gravity must be between 0 and 10, not {req.key_gravity}")
    if req.tempo_bpm is not None and not 1.0 <= req.tempo_bpm <= 1000.0:
        raise BadParams(f"tempo must be between 1 and 1000 bpm, not {req.tempo_bpm}")
    if req.program is not None and not 0 <= req.program <= 127:
        raise BadParams(f"program must be a General MIDI program 0..127, not {req.program}")


SAFETY_NETS = ("grammar", "repetition guard", "key bias")


@dataclass
class SafetyNetCounts:
    """How often each safety net changes a generated note, summed over the calls that were
    given this object. Per note, a net's share is the total variation distance between the
    model's tempered distribution with the net and without it (the other nets on): the least
    share of notes that must differ between the two, however the draws are paired. Grammar: the
    shift mask, the pitch range and no doubled chord note (either field); repetition guard:
    MAX_REPEATS and the distinct-pitch window; key bias: the out-of-scale penalty and tonal
    gravity."""

    notes: int = 0
    changed: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SAFETY_NETS, 0.0))

    def rates(self) -> dict[str, float]:
        return {k: v / self.notes if self.notes else float("nan") for k, v in self.changed.items()}


@dataclass
class _Row:
    """One request, planned for decoding: its settings and grammar, in ticks of the seed's
    timeline."""

    req: GenerationRequest
    seed_events: np.ndarray  # (S, 5)
    style: int
    style_name: str | None
    rng_seed: int
    generator: torch.Generator
    time_signature: tuple[int, int]
    bar: int
    ref_tick: int  # the seed's last onset: the first shift counts from here
    seed_end: int  # where the seed's sound stops; the continuation starts here or later
    end_tick: int  # nothing sounds at or after this tick
    pitch_ok: np.ndarray  # (n_pitch,) bool: the allowed range
    pitch_bias: np.ndarray  # (n_pitch,) float: key-keeping bias
    history: list[int]  # the seed's last pitches (the repetition guard looks back into them)
    key: int  # the model's key class (see `seed_key`)
    tempo_bpm: float | None = None  # no seed: drawn from the style's corpus
    target_key: tuple[int, str] | None = None  # no seed: the key drawn for the result


def _plan_row(lm: LoadedModel, req: GenerationRequest) -> _Row:
    codec, cfg = lm.codec, lm.codec.config
    seed = req.seed if req.seed is not None and req.seed.notes else None
    ts = req.seed.time_signature if req.seed is not None else (4, 4)
    if req.style is not None:
        style_name = req.style
    elif req.seed is not None and req.seed.style in cfg.styles:
        style_name = req.seed.style
    else:
        style_name = None
    try:
        style = codec.style_index(style_name)
    except ValueError as exc:
        raise BadParams(str(exc)) from None
    rng_seed = req.rng_seed if req.rng_seed is not None else secrets.randbits(62)
    generator = torch.Generator().manual_seed(int(rng_seed))
    drawn_tempo: float | None = None
    target_key: tuple[int, str] | None = None
    if seed is None:
        # No seed: metre, tempo and key as the style's own corpus has them (the row's own random
        # numbers, so reproducible); an empty MIDI file keeps its own metre and tempo.
        drawn_ts, drawn_tempo, target_key = draw_setting(
            style_name, torch.rand(3, generator=generator).tolist()
        )
        if req.seed is None:
            ts = drawn_ts
        else:
            drawn_tempo = None
    bar = codec.bar_ticks(ts)
    pitch_ok = np.ones(codec.n_pitch, dtype=bool)
    pitch_bias = np.zeros(codec.n_pitch, dtype=np.float32)
    pcs = (np.arange(codec.n_pitch) + cfg.pitch_low) % 12  # each pitch row's pitch class
    seed_tonal: tuple[int, str] | None = None
    if seed is None:
        events = np.zeros((0, 5), dtype=np.int64)
        ref_tick = seed_end = 0
        history: list[int] = []
        # No seed, no key class: "unknown" (0), as training feeds an empty seed; the result is
        # moved to the drawn key afterwards (`_finish`), and no gravity pulls while decoding.
        key = 0
    else:
        onsets, durations, pitches, velocities = codec.note_ticks(seed)
        events = codec.encode_ticks(onsets, durations, pitches, velocities, ts)[-MAX_SEED_NOTES:]
        ref_tick = int(onsets.max())
        seed_end = int((onsets + np.maximum(1, durations)).max())
        low = max(0, int(events[:, PITCH].min()) - PITCH_MARGIN)
        high = min(codec.n_pitch - 1, int(events[:, PITCH].max()) + PITCH_MARGIN)
        pitch_ok[:] = False
        pitch_ok[low : high + 1] = True
        seed_tonal = estimate_key(seed)
        in_scale = np.zeros(12, dtype=bool)
        in_scale[list(scale_pitch_classes(seed, seed_tonal))] = True
        pitch_bias[~in_scale[pcs]] = -req.key_penalty
        history = [int(p) for p in events[-MAX_REPEATS:, PITCH]]
        key = seed_key(events, codec) if lm.config.n_key else 0
    # the key to gravitate to: the seed's estimate (none without a seed)
    if seed_tonal is not None and req.key_gravity > 0:
        pitch_bias += key_profile_bias(*seed_tonal, req.key_gravity)[pcs]
    bars_done = -(-seed_end // bar)  # the continuation fills whole bars of the seed's grid
    return _Row(
        req=req,
        seed_events=events,
        style=style,
        style_name=style_name if style else None,
        rng_seed=int(rng_seed),
        generator=generator,
        time_signature=ts,
        bar=bar,
        ref_tick=ref_tick,
        seed_end=seed_end,
        end_tick=(bars_done + req.bars) * bar,
        pitch_ok=pitch_ok,
        pitch_bias=pitch_bias,
        history=history,
        key=key,
        tempo_bpm=drawn_tempo,
        target_key=target_key,
    )


class _Sampling:
    """Each row's sampling settings as (B, 1) tensors on the device, and its uniforms: drawn
    CHUNK steps at a time from the row's own generator, so a row samples the same notes alone
    or in any batch, and no generator is touched per note."""

    def __init__(self, lm: LoadedModel, rows: list[_Row], device: torch.device) -> None:
        codec = lm.codec
        self.device = device
        self.generators = [r.generator for r in rows]
        temperature = torch.tensor([[r.req.temperature] for r in rows], dtype=torch.float32)
        self.inv_temp = (1.0 / temperature).to(device)  # (B, 1)
        self.top_p = torch.tensor([[r.req.top_p] for r in rows], dtype=torch.float32).to(device)
        sizes = (codec.n_shift, codec.n_pitch, codec.n_duration, codec.n_velocity)
        # per field: the last rank top-k keeps (n - 1 when top-k is off)
        self.last_rank = [
            torch.tensor([[min(r.req.top_k or n, n) - 1] for r in rows]).to(device) for n in sizes
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


def _changed_share(without: torch.Tensor, with_net: torch.Tensor) -> torch.Tensor:
    """(B, 1) total variation distance between the softmaxes of two (B, n) logit rows."""
    diff = without.softmax(dim=-1) - with_net.softmax(dim=-1)
    return 0.5 * diff.abs().sum(dim=-1, keepdim=True)


def _sample(
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


class _Grammar:
    """The rules every row's notes obey, as tensors on the device, one row per request.

    All rows decode in lockstep, so at step t every row still decoding has made exactly t notes:
    the rules that depend on the count (the first note's placement, the distinct-pitch window)
    are decided in Python, the rest by tensor ops without reading anything back to the host."""

    def __init__(self, lm: LoadedModel, rows: list[_Row], device: torch.device) -> None:
        codec, cfg = lm.codec, lm.codec.config
        B, n_shift, eos = len(rows), codec.n_shift, codec.eos

        def column(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)[:, None].to(device)  # (B, 1)

        self.max_position = cfg.max_position
        # bars longer than the position classes need the clamp (EventCodec.position)
        self.long_bars = max(r.bar for r in rows) > cfg.max_position + 1
        self.bar = column([r.bar for r in rows])
        self.seed_end = column([r.seed_end for r in rows])
        self.end_tick = column([r.end_tick for r in rows])
        self.tick = column([r.ref_tick for r in rows])  # onset of the last note
        self.onset = self.tick  # onset of this step's note
        self.sound_end = torch.zeros_like(self.tick)  # the latest end of a generated note
        self.done = torch.zeros(B, 1, dtype=torch.bool, device=device)
        self.first_tick = self.tick  # what the first shift counts from (decode's start_tick)
        # shift -> ticks; EOS moves past any end, so "done" is one comparison
        ticks = list(range(n_shift))
        ticks[eos] = 1 << 40
        self.shift_ticks = torch.tensor(ticks, dtype=torch.int64, device=device)
        self.duration_ticks = torch.tensor(cfg.duration_bins, dtype=torch.int64, device=device)

        # SHIFT masks, additive. The first note: no end yet, and it starts where the seed's
        # sound stops (a longer gap is crossed by whole bars in `place`).
        first = np.zeros((B, n_shift), dtype=np.float32)
        first[:, eos] = -np.inf
        for i, r in enumerate(rows):
            gap = r.seed_end - r.ref_tick
            if not len(r.seed_events):
                first[i, 1:] = -np.inf  # no seed: the music starts at once, no leading silence
            elif gap <= cfg.max_shift:
                first[i, : max(0, gap)] = -np.inf
        self.first_shift = torch.from_numpy(first).to(device)  # (B, n_shift)
        # Later notes, by code = chord size + (MAX_CHORD + 1) x (bars filled): no zero shift once
        # the chord is full, no end before the bars are filled. One class, max_shift, is never
        # forbidden, so a shift mask is never empty.
        later = np.zeros((2, MAX_CHORD + 1, n_shift), dtype=np.float32)
        later[:, MAX_CHORD:, 0] = -np.inf
        later[0, :, eos] = -np.inf
        self.later_shift = torch.from_numpy(later.reshape(-1, n_shift)).to(device)
        self.code = torch.zeros_like(self.tick)

        # PITCH state. `soft`: what the range and the repetition guard forbid for the next note.
        # Some pitch is always left unless a row's range is tiny: the guards forbid at most the
        # last pitch, MIN_DISTINCT - 1 window pitches and a chord (MAX_CHORD - 1 pitches).
        most = 1 + (MIN_DISTINCT - 1) + (MAX_CHORD - 1)
        self.fallback = any(int(r.pitch_ok.sum()) <= most for r in rows)
        n_pitch = codec.n_pitch
        self.outside = torch.from_numpy(~np.stack([r.pitch_ok for r in rows])).to(device)
        last = [r.history[-1] if r.history else -1 for r in rows]
        run = []
        for r in rows:  # the seed's own repeats count towards MAX_REPEATS
            k = 0
            while k < len(r.history) and r.history[-1 - k] == r.history[-1]:
                k += 1
            run.append(k)
        self.last, self.run = column(last), column(run)
        self.soft = self._repeat_forbidden(self.last.clamp_min(0))  # (no seed: no last pitch)
        self.last_seen = torch.full((B, n_pitch), -1, dtype=torch.int64, device=device)
        self.chord = torch.zeros(B, n_pitch, dtype=torch.bool, device=device)
        self.chord_kept = self.chord  # this onset's chord when the note joins it
        self.chord_size = torch.zeros_like(self.tick)
        self.same_onset = self.done  # (B, 1) this step's shift is 0

    def _repeat_forbidden(self, last: torch.Tensor) -> torch.Tensor:
        """(B, n_pitch): outside the range, or the last pitch (B, 1), where it has come
        MAX_REPEATS times in a row."""
        repeats = self.run >= MAX_REPEATS
        if self.fallback:
            return self.outside | torch.zeros_like(self.outside).scatter_(1, last, repeats)
        # Without the fallback the last pitch is always inside the range: one scatter will do.
        return self.outside.scatter(1, last, repeats)

    def select(self, rows: torch.Tensor) -> None:
        for name in (
            "bar", "seed_end", "end_tick", "tick", "onset", "sound_end", "done", "code",
            "outside", "last", "run", "soft", "last_seen", "chord", "chord_size",
        ):  # fmt: skip
            setattr(self, name, getattr(self, name)[rows])

    def shift_mask(self, t: int) -> torch.Tensor:
        """(B, n_shift) 0 or -inf, for step t."""
        if t == 0:
            return self.first_shift
        return self.later_shift.index_select(0, self.code.view(-1))

    def place(self, t: int, shift: torch.Tensor) -> torch.Tensor:
        """The onset of a note `shift` (B, 1) after the last one; rows that reach the end (or
        chose EOS) are done. A first note that would fall inside the seed's last, long note moves
        on by whole bars (the codec's own rule for long gaps). Returns the bar position (B, 1)."""
        onset = self.tick + self.shift_ticks.take(shift)  # (B, 1)
        if t == 0:
            behind = (self.seed_end - onset).clamp_min(0)
            bars = torch.div(behind + self.bar - 1, self.bar, rounding_mode="floor")
            onset = onset + bars * self.bar
            self.first_tick = onset - shift
        self.done = self.done | (onset >= self.end_tick)
        self.onset = onset
        self.same_onset = shift == 0
        # (a done row's position is never used: no need to stop its onset at the end)
        return bar_positions(onset, self.bar, self.max_position if self.long_bars else None)

    def pitch_forbidden(self, t: int) -> torch.Tensor:
        """(B, n_pitch) True where this step's pitch may not go: outside the range, a repeat too
        many, a pitch of a too monotonous window, a pitch already on this onset."""
        if t == 0:
            self.chord_kept = torch.zeros_like(self.chord)  # the first note starts an onset
            forbid = self.soft
        else:
            self.chord_kept = self.chord & self.same_onset
            forbid = self.soft | self.chord_kept
        if self.fallback:  # only reachable with a tiny pitch range
            empty = forbid.all(dim=1, keepdim=True)
            wide = self.outside | self.chord_kept
            wide = wide & ~wide.all(dim=1, keepdim=True)
            forbid = torch.where(empty, wide, forbid)
        return forbid

    def add_pitch(self, t: int, pitch: torch.Tensor) -> None:
        """Step t's note has pitch (B, 1): update the chord and the repetition guards."""
        self.chord = self.chord_kept.scatter_(1, pitch, True)  # (chord_kept: a fresh tensor)
        self.chord_size = self.chord_size * self.same_onset + 1 if t else torch.ones_like(pitch)
        self.run = self.run * (pitch == self.last) + 1
        self.last = pitch
        self.last_seen.scatter_(1, pitch, t)
        self.soft = self._repeat_forbidden(pitch)
        if t + 2 >= DISTINCT_WINDOW:
            # the next note would close a window of DISTINCT_WINDOW notes: the last
            # DISTINCT_WINDOW - 1 ones must not leave it with fewer than MIN_DISTINCT pitches
            recent = self.last_seen >= t + 2 - DISTINCT_WINDOW  # (B, n_pitch)
            few = recent.sum(dim=1, keepdim=True) < MIN_DISTINCT
            self.soft = self.soft | (recent & few)

    def add_duration(self, duration: torch.Tensor) -> None:
        """Step t's note has duration class (B, 1); the next shift counts from its onset."""
        end = torch.minimum(self.onset + self.duration_ticks.take(duration), self.end_tick)
        self.sound_end = torch.maximum(self.sound_end, end)
        self.tick = self.onset
        filled = self.sound_end >= self.end_tick
        self.code = torch.add(self.chord_size, filled, alpha=MAX_CHORD + 1)


def bar_positions(ticks: torch.Tensor, bar: torch.Tensor, max_position: int | None) -> torch.Tensor:
    """`EventCodec.position` of many ticks at once: ticks and bar lengths (in ticks) alike.
    max_position None: every bar is short enough to need no clamp."""
    position = ticks.remainder(bar)
    return position if max_position is None else position.clamp_max_(max_position)


def _finish(lm: LoadedModel, row: _Row, events: np.ndarray, first_tick: int) -> Piece:
    seed = row.req.seed
    tempo = row.req.tempo_bpm or row.tempo_bpm or (seed.tempo_bpm if seed is not None else 120.0)
    if row.req.program is not None:
        program = row.req.program
    else:
        program = seed.program if seed is not None else 0
    piece = lm.codec.decode(
        events,
        start_tick=first_tick if len(events) else row.ref_tick,
        tempo_bpm=tempo,
        time_signature=row.time_signature,
        program=program,
        style=row.style_name,
    )
    end_beat = row.end_tick / lm.codec.config.ticks_per_beat
    notes = tuple(
        replace(n, duration=end_beat - n.start) if n.end > end_beat else n for n in piece.notes
    )
    if row.target_key is not None:
        notes = to_key(lm, notes, row.target_key)
    return replace(piece, notes=notes, meta={"rng_seed": str(row.rng_seed)})


def to_key(lm: LoadedModel, notes: tuple[Note, ...], target: tuple[int, str]) -> tuple[Note, ...]:
    """The notes moved by at most a tritone so that their estimated key becomes `target` (or
    its relative, when the notes are in the other mode: the same key signature), folded by
    octaves into the model's pitch range."""
    found = estimate_key(Piece(notes))
    if found is None:
        return notes
    tonic, mode = target if target[1] == found[1] else relative_key(*target)
    step = (tonic - found[0] + 6) % 12 - 6
    if step == 0:
        return notes
    moved = (replace(n, pitch=lm.codec.fold_pitch(n.pitch + step)) for n in notes)
    return tuple(sorted(moved, key=lambda n: (n.start, n.pitch)))


PAD_WASTE = 1.5  # a group of seeds is encoded together while padding costs at most this share


def _encode(
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
    for rows, m in parts:
        width = m.values.size(1)
        values[rows, :width] = m.values
        if keys is not None and m.keys is not None:
            keys[rows, :width] = m.keys
        mask[rows, :width] = m.mask
        for (h, c), (mh, mc) in zip(state, m.state, strict=True):
            h[rows], c[rows] = mh, mc
    return Memory(values=values, keys=keys, mask=mask, state=state, key=model._key(key, style))


@torch.no_grad()
def continue_batch(
    lm: LoadedModel,
    requests: list[GenerationRequest],
    *,
    check_every: int | None = None,
    nets: SafetyNetCounts | None = None,
) -> list[Piece]:
    """Decode all requests together; each row's result equals decoding it alone.

    Everything per note stays on the model's device; the host only learns, once per step (every
    CHECK_EVERY steps on a GPU), how many rows are done, to stop or to drop them. `check_every`
    overrides that cadence (the tests run the GPU's on the CPU); the notes do not depend on it.
    `nets`: count how often each safety net changed a note (costs a few more samples a step)."""
    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be at least 1, not {check_every}")
    for req in requests:
        _check(req)
    if not requests:
        return []
    model, device = lm.model, lm.device
    model.eval()
    rows = [_plan_row(lm, req) for req in requests]
    B = len(rows)
    S = max(1, max(len(r.seed_events) for r in rows))
    seed = np.zeros((B, S, 5), dtype=np.int64)
    for i, r in enumerate(rows):
        seed[i, : len(r.seed_events)] = r.seed_events
    seed_len = torch.tensor([len(r.seed_events) for r in rows], device=device)
    style = torch.tensor([r.style for r in rows], device=device)
    key = torch.tensor([r.key for r in rows], device=device)
    memory = _encode(model, torch.from_numpy(seed).to(device), seed_len, style, key)
    decoder = model.batch_decoder(memory, style)
    grammar, sampling = _Grammar(lm, rows, device), _Sampling(lm, rows, device)
    copy = _copy_memory(lm, rows, torch.from_numpy(seed).to(device), seed_len)
    offsets = decoder.offsets
    column_offsets = torch.tensor(
        [0, offsets[PITCH], offsets[DURATION], offsets[VELOCITY], 0, 0, 0], device=device
    )  # (7,) position and the extras are offset already
    if check_every is None:
        check_every = 1 if device.type == "cpu" else CHECK_EVERY

    live = list(range(B))  # the rows of `rows` still decoding, in batch order
    segments: list[tuple[list[int], list[torch.Tensor], list[torch.Tensor]]] = []
    made: list[torch.Tensor] = []  # this segment's (B', 7) events, one per step
    done: list[torch.Tensor] = []  # this segment's (B', 1) done flags, one per step
    events: torch.Tensor | None = None
    counted = torch.zeros(1 + len(SAFETY_NETS), dtype=torch.float64, device=device)
    t = 0
    while True:
        u = sampling.uniforms(t)  # (4, B', 1)
        inv_temp, top_p, last_rank = sampling.inv_temp, sampling.top_p, sampling.last_rank
        x = decoder.step(events)  # (B', 4H)

        # SHIFT (and the bar position it lands on); EOS or passing the end finishes a row
        shift_logits = decoder.logits(SHIFT, x)
        if copy is not None:
            shift_logits = copy.mixed(SHIFT, shift_logits)
        scaled = torch.addcmul(grammar.shift_mask(t), shift_logits, inv_temp)
        shift = _sample(scaled, last_rank[SHIFT], top_p, u[SHIFT])  # (B', 1)
        if nets is not None:  # the grammar's change to the shift distribution
            shift_tv = _changed_share(shift_logits * inv_temp, scaled)
        position = grammar.place(t, shift) + offsets[POSITION]
        if t == 0:
            first_tick = grammar.first_tick
        x = decoder.choose(SHIFT, x, torch.cat([shift, position], dim=1))

        # PITCH: range, repetition guards, key bias
        pitch_logits = decoder.logits(PITCH, x)
        if copy is not None:
            pitch_logits = copy.mixed(PITCH, pitch_logits, shift)
        scaled = torch.addcmul(sampling.pitch_bias, pitch_logits, inv_temp)
        forbidden = grammar.pitch_forbidden(t)
        if nets is not None:
            biased = scaled.clone()
        scaled = scaled.masked_fill_(forbidden, float("-inf"))
        pitch = _sample(scaled, last_rank[PITCH], top_p, u[PITCH])
        if nets is not None:
            hard = grammar.outside | grammar.chord_kept  # the grammar's part of `forbidden`
            inf = float("-inf")
            pitch_tv = _changed_share(biased.masked_fill(forbidden & ~hard, inf), scaled)
            changed = [
                1 - (1 - shift_tv) * (1 - pitch_tv),  # grammar: shift or pitch
                _changed_share(biased.masked_fill(hard, inf), scaled),  # repetition guard
                _changed_share((pitch_logits * inv_temp).masked_fill(forbidden, inf), scaled),
            ]
            alive = ~grammar.done  # (B', 1)
            counted += torch.cat(
                [alive.sum(0)] + [torch.where(alive, c, 0.0).sum(0) for c in changed]
            )
        grammar.add_pitch(t, pitch)
        x = decoder.choose(PITCH, x, pitch)

        # DURATION, VELOCITY: unconstrained (durations are clipped to the end afterwards)
        duration_logits = decoder.logits(DURATION, x)
        if copy is not None:
            duration_logits = copy.mixed(DURATION, duration_logits, shift, pitch)
        scaled = duration_logits * inv_temp
        duration = _sample(scaled, last_rank[DURATION], top_p, u[DURATION])
        grammar.add_duration(duration)
        if copy is not None:
            copy.append(shift, pitch, duration, position - offsets[POSITION])
        x = decoder.choose(DURATION, x, duration)
        scaled = decoder.logits(VELOCITY, x) * inv_temp
        velocity = _sample(scaled, last_rank[VELOCITY], top_p, u[VELOCITY])

        events = torch.cat([shift, pitch, duration, velocity, position, decoder.extras], dim=1)
        events += column_offsets  # (B', 7) the next step's input
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
            segments.append((live, made, done))
            keep = (~grammar.done[:, 0]).nonzero()[:, 0]  # (B'',)
            kept = keep.tolist()
            live = [live[j] for j in kept]
            made, done = [], []
            decoder.select(keep)
            grammar.select(keep)
            sampling.select(keep, kept)
            if copy is not None:
                copy.select(keep)
            events = events[keep]
    segments.append((live, made, done))
    if nets is not None:
        total, *changed_by = counted.tolist()
        nets.notes += round(total)
        for name, value in zip(SAFETY_NETS, changed_by, strict=True):
            nets.changed[name] += value

    notes: list[list[np.ndarray]] = [[] for _ in rows]
    for members, seg_made, seg_done in segments:
        ev = torch.stack(seg_made).cpu().numpy()  # (T, B', 7)
        keep = ~torch.stack(seg_done)[..., 0].cpu().numpy()  # (T, B'): before the row finished
        for j, i in enumerate(members):
            notes[i].append(ev[keep[:, j], j, :5])
    first = first_tick[:, 0].tolist()
    offset = np.asarray(offsets[:5], dtype=np.int64)
    return [
        _finish(lm, r, np.concatenate(notes[i]).reshape(-1, 5) - offset, first[i])
        for i, r in enumerate(rows)
    ]


def _copy_memory(
    lm: LoadedModel, rows: list[_Row], seed: torch.Tensor, seed_len: torch.Tensor
) -> CopyMemory | None:
    """The copy path's memory of each row's seed; None when no row copies."""
    params = copy_params_of(lm)
    on = [r.req.copy for r in rows]
    if params.off or not any(on):
        return None
    codec = lm.codec
    sizes = (codec.n_shift, codec.n_pitch, codec.n_duration)
    copying = torch.tensor(on, dtype=torch.float32, device=seed.device)[:, None]
    return CopyMemory(seed, seed_len, sizes, params, rows_on=copying)


def continue_seed(
    lm: LoadedModel,
    seed: Piece | None,
    bars: int,
    style: str | None = None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    top_k: int = 0,
    seed_rng: int | None = None,
    *,
    program: int | None = None,
    tempo_bpm: float | None = None,
    key_penalty: float = KEY_PENALTY,
    key_gravity: float = KEY_GRAVITY,
    copy: bool = True,
    nets: SafetyNetCounts | None = None,
) -> Piece:
    """The continuation only (absolute beats, starting where the seed's sound stops), in the
    seed's tempo, time signature and program; the same `seed_rng` gives the same notes.
    `nets`: count how often each safety net changed a note (see `SafetyNetCounts`)."""
    req = GenerationRequest(
        seed=seed,
        bars=bars,
        style=style,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        rng_seed=seed_rng,
        program=program,
        tempo_bpm=tempo_bpm,
        key_penalty=key_penalty,
        key_gravity=key_gravity,
        copy=copy,
    )
    return continue_batch(lm, [req], nets=nets)[0]
