"""What generation is asked (`GenerationRequest`) and the row each request is planned into
(`Row`, by engine.model.generate.plan), read by the decoder's parts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.music.notes import Piece
from engine.music.request import ComposeOptions

KEY_PENALTY = 1.0  # logits subtracted from pitch classes outside the seed's scale
# Tonal gravity: logits added to each pitch class, gravity x log of the key's Krumhansl-Kessler
# profile (0 for the tonic, about -1 for the weakest degree at gravity 1). Off by default since
# motif-default-v3: judged by an estimator it never steers by (music21's Aarden-Essen, 100 held-out
# seeds, docs/seed-fidelity.md), gravity 0.75 kept the key no better (64% against 66% at 0) and
# raised the continuations holding one pitch 4+ times from 38% to 47% (real music: 15%).
KEY_GRAVITY = 0.0
MAX_BARS = 1024


@dataclass(frozen=True)
class Knobs:
    """How the decoder draws beyond what a user asks: fixed in the product, varied only by the
    judge, the benchmarks and the tests."""

    key_penalty: float = KEY_PENALTY
    key_gravity: float = KEY_GRAVITY
    copy: bool = True  # the copy path (engine.model.copy.copying), with the model's fitted lambdas
    strains: bool = True  # the strain plan (engine.model.copy.strains), with the copy path only
    top_k: int = 0  # sample among the k likeliest values of each field; 0: off (top-p only)
    texture: bool = True  # onsets sound no more notes than the seed's fullest, no fewer than its
    # thinnest after the first (engine.music.texture)


DEFAULT_KNOBS = Knobs()
ASKED = ComposeOptions()


@dataclass(frozen=True)
class GenerationRequest:
    """One continuation to draw: its seed (None: from nothing), parsed and checked when the
    request was submitted, and what the request asked (the user's own `ComposeOptions`: bars,
    style, temperature, top-p, instrument, tempo, rng seed, ending), with the decoder's knobs.
    The continuation plays `options.instrument` (the options' default, 0, is the piano;
    `continue_seed` keeps the seed's program when it is given none)."""

    seed: Piece | None
    options: ComposeOptions = ASKED
    knobs: Knobs = DEFAULT_KNOBS  # never a user's option


@dataclass
class Row:
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
    seed_phrase: np.ndarray  # (S,) each seed event's bar in the phrase (events.PHRASE)
    phrase_origin: int  # the seed's first full bar (1 after a pickup): phrase bars count from it
    tonal: tuple[int, str] | None  # the seed's estimated key (the closing ending's tonic)
    tempo_bpm: float | None = None  # no seed: drawn from the style's corpus
    target_key: tuple[int, str] | None = None  # no seed: the key drawn for the result
    # a melody over a bass: the pitch index the bass keeps to and the melody keeps above
    # (engine.music.texture.voice_split); -1: none
    voice_split: int = -1
    # a chordal seed stays chordal: the fewest notes sounding at its onsets (after the first),
    # which the continuation's onsets keep (engine.music.texture.fewest_sounding); 0 or 1: none
    voice_floor: int = 0
