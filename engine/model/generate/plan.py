"""A request planned for decoding: its seed encoded, its style, key class, pitch range, key bias
and end, in ticks of the seed's timeline (no seed: metre, tempo and key drawn from the style)."""

from __future__ import annotations

import secrets
from typing import NamedTuple

import numpy as np
import torch

from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel
from engine.model.corpus.style_priors import draw_setting
from engine.model.events import DURATION, PITCH, SHIFT, phrase_bars
from engine.model.generate.grammar import MAX_REPEATS
from engine.model.generate.request import GenerationRequest, Row
from engine.music import keys
from engine.music.keys import MAJOR_PROFILE as _MAJOR_PROFILE
from engine.music.keys import MAJOR_SCALE as _MAJOR_SCALE
from engine.music.keys import MINOR_PROFILE as _MINOR_PROFILE
from engine.music.keys import MINOR_SCALE_WITH_LEADING_NOTE as _MINOR_SCALE
from engine.music.keys import best_key as _best_key
from engine.music.notes import Piece
from engine.music.texture import fewest_sounding, voice_split

PITCH_MARGIN = 12  # generated pitches stay within the seed's range widened by this much
MAX_SEED_NOTES = 256  # the encoder reads the seed's last notes only
MIN_KEY_NOTES = 3  # fewer seed notes: key class 0 ("unknown")


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
    key = key or keys.key_for_generation(piece.notes)
    if key is None:
        return frozenset(range(12))
    tonic, mode = key
    steps = _MAJOR_SCALE if mode == "major" else _MINOR_SCALE
    return frozenset((tonic + s) % 12 for s in steps) | {n.pitch % 12 for n in piece.notes}


def plan_row(lm: LoadedModel, req: GenerationRequest) -> Row:
    """The request's row: its style, random generator, metre and the rules its seed sets."""
    codec = lm.codec
    seed = req.seed if req.seed is not None and req.seed.notes else None
    style_name = _style_name(lm, req)
    try:
        style = codec.style_index(style_name)
    except ValueError as exc:
        raise BadParams(str(exc)) from None
    rng_seed = req.options.rng_seed if req.options.rng_seed is not None else secrets.randbits(62)
    generator = torch.Generator().manual_seed(int(rng_seed))
    ts = req.seed.time_signature if req.seed is not None else (4, 4)
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
    rules = _no_seed_rules(lm) if seed is None else _seed_rules(lm, req, seed, ts)
    bars_done = -(-rules.seed_end // bar)  # the continuation fills whole bars of the seed's grid
    return Row(
        req=req,
        seed_events=rules.events,
        style=style,
        style_name=style_name if style else None,
        rng_seed=int(rng_seed),
        generator=generator,
        time_signature=ts,
        bar=bar,
        ref_tick=rules.ref_tick,
        seed_end=rules.seed_end,
        end_tick=(bars_done + req.options.bars) * bar,
        pitch_ok=rules.pitch_ok,
        pitch_bias=rules.pitch_bias,
        history=rules.history,
        key=rules.key,
        seed_phrase=rules.phrase,
        phrase_origin=rules.phrase_origin,
        tonal=rules.tonal,
        tempo_bpm=drawn_tempo,
        target_key=target_key,
        voice_split=_voice_split(lm, seed, req.knobs.texture),
        voice_floor=fewest_sounding(seed.notes) if seed is not None and req.knobs.texture else 0,
    )


def _voice_split(lm: LoadedModel, seed: Piece | None, texture: bool) -> int:
    """The seed's split between a bass and the melody over it, as a pitch index; -1: none."""
    split = voice_split(seed.notes) if seed is not None and texture else None
    if split is None:
        return -1
    index = split - lm.codec.config.pitch_low
    return index if 0 < index < lm.codec.n_pitch - 1 else -1


def _style_name(lm: LoadedModel, req: GenerationRequest) -> str | None:
    """The request's style, else the seed's if the model knows it, else None ("none")."""
    if req.options.style is not None:
        return req.options.style
    if req.seed is not None and req.seed.style in lm.codec.config.styles:
        return req.seed.style
    return None


class _SeedRules(NamedTuple):
    """What a row's seed sets: its events, where it ends, the pitch range and key bias."""

    events: np.ndarray  # (S, 5)
    ref_tick: int
    seed_end: int
    pitch_ok: np.ndarray
    pitch_bias: np.ndarray
    history: list[int]
    key: int
    phrase: np.ndarray  # (S,)
    phrase_origin: int
    tonal: tuple[int, str] | None


def _no_seed_rules(lm: LoadedModel) -> _SeedRules:
    # No seed, no key class: "unknown" (0), as training feeds an empty seed; the result is
    # moved to the drawn key afterwards (`_finish`), and no gravity pulls while decoding.
    n_pitch = lm.codec.n_pitch
    return _SeedRules(
        events=np.zeros((0, 5), dtype=np.int64),
        ref_tick=0,
        seed_end=0,
        pitch_ok=np.ones(n_pitch, dtype=bool),
        pitch_bias=np.zeros(n_pitch, dtype=np.float32),
        history=[],
        key=0,
        phrase=np.zeros(0, dtype=np.int64),
        phrase_origin=0,
        tonal=None,
    )


def _seed_rules(
    lm: LoadedModel, req: GenerationRequest, seed: Piece, ts: tuple[int, int]
) -> _SeedRules:
    """The seed's last MAX_SEED_NOTES events; its range widened by PITCH_MARGIN; a bias against
    pitch classes outside its estimated key's scale (and, with gravity, towards its tonic)."""
    codec = lm.codec
    onsets, durations, pitches, velocities = codec.note_ticks(seed)
    whole = codec.encode_ticks(onsets, durations, pitches, velocities, ts)
    # bar in the phrase as training counts it: from the encoded shifts, pickups padded
    bar = codec.bar_ticks(ts)
    ticks = np.cumsum(whole[:, SHIFT])
    phrase = phrase_bars(ticks, bar, int(ticks[0]), lm.config.n_phrase)[-MAX_SEED_NOTES:]
    events = whole[-MAX_SEED_NOTES:]
    low = max(0, int(events[:, PITCH].min()) - PITCH_MARGIN)
    high = min(codec.n_pitch - 1, int(events[:, PITCH].max()) + PITCH_MARGIN)
    pitch_ok = np.zeros(codec.n_pitch, dtype=bool)
    pitch_ok[low : high + 1] = True
    pcs = (np.arange(codec.n_pitch) + codec.config.pitch_low) % 12  # each pitch row's class
    # the key in force at the seed's end: a seed that changes key is continued in its last
    seed_tonal = keys.key_in_force(seed)
    in_scale = np.zeros(12, dtype=bool)
    in_scale[list(scale_pitch_classes(keys.key_section(seed), seed_tonal))] = True
    pitch_bias = np.zeros(codec.n_pitch, dtype=np.float32)
    pitch_bias[~in_scale[pcs]] = -req.knobs.key_penalty
    # the key to gravitate to: the seed's estimate
    if seed_tonal is not None and req.knobs.key_gravity > 0:
        pitch_bias += key_profile_bias(*seed_tonal, req.knobs.key_gravity)[pcs]
    return _SeedRules(
        events=events,
        ref_tick=int(onsets.max()),
        seed_end=int((onsets + np.maximum(1, durations)).max()),
        pitch_ok=pitch_ok,
        pitch_bias=pitch_bias,
        history=[int(p) for p in events[-MAX_REPEATS:, PITCH]],
        key=seed_key(events, codec) if lm.config.n_key else 0,
        phrase=phrase,
        phrase_origin=-(-int(ticks[0]) // bar),
        tonal=seed_tonal,
    )
