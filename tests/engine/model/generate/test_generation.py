from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import BadParams
from engine.model.checkpoint import load_checkpoint, save_checkpoint
from engine.model.events import PITCH, SHIFT, EventCodec
from engine.model.generate.continuation import continue_batch, continue_seed
from engine.model.generate.grammar import (
    DISTINCT_WINDOW,
    MAX_REPEATS,
    MIN_DISTINCT,
    Grammar,
    bar_positions,
    seed_chord_cap,
)
from engine.model.generate.plan import (
    key_of_class,
    key_profile_bias,
    plan_row,
    scale_pitch_classes,
    seed_key,
)
from engine.model.generate.request import GenerationRequest, Knobs
from engine.model.generate.sampling import sample
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.music.keys import key_for_generation
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions
from tests.tolerance import SAME_MATH, assert_close_to_scale

CODEC = EventCodec()


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]


def _seed(pitches=C_MAJOR, ts=(4, 4), dur=0.5, **kw) -> Piece:
    notes = tuple(Note(i * dur, dur, p, 90) for i, p in enumerate(pitches))
    return Piece(notes, time_signature=ts, **kw)


def _chords(chords: list[list[int]], dur: float = 1.0) -> Piece:
    notes = tuple(Note(i * dur, dur, p, 90) for i, chord in enumerate(chords) for p in chord)
    return Piece(notes)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=32, layers=2, n_key=25)
    path = tmp_path_factory.mktemp("gen") / "m.pt"
    return load_checkpoint(save_checkpoint(path, MotifSeq2Seq(cfg), cfg, CODEC.config, {}))


def _keys(piece: Piece):
    return [(n.start, n.duration, n.pitch, n.velocity) for n in piece.notes]


def test_same_rng_seed_same_notes_and_seed_never_echoed(lm):
    seed = _seed(tempo_bpm=93.0, program=41)
    a = continue_seed(lm, seed, 4, seed_rng=7)
    b = continue_seed(lm, seed, 4, seed_rng=7)
    c = continue_seed(lm, seed, 4, seed_rng=8)
    assert _keys(a) == _keys(b) != _keys(c)
    assert a.notes and a.meta["rng_seed"] == "7"
    assert (a.tempo_bpm, a.time_signature, a.program) == (93.0, (4, 4), 41)
    assert min(n.start for n in a.notes) >= seed.end_beat  # the continuation only
    assert (
        continue_seed(lm, seed, 2).meta["rng_seed"] != continue_seed(lm, seed, 2).meta["rng_seed"]
    )


def test_batch_equals_each_row_alone(lm):
    requests = [
        GenerationRequest(_seed(), ComposeOptions(bars=3, rng_seed=1)),
        GenerationRequest(None, ComposeOptions(bars=2, style="folk", rng_seed=2, temperature=0.7)),
        GenerationRequest(
            _seed(C_MAJOR[:3], ts=(3, 4)),
            ComposeOptions(bars=5, rng_seed=3, top_p=0.8),
            Knobs(top_k=5),
        ),
        GenerationRequest(
            _seed([57, 60, 64] * 6, dur=0.25), ComposeOptions(bars=1, rng_seed=4, temperature=1.5)
        ),
        GenerationRequest(_seed(), ComposeOptions(bars=3, rng_seed=1, style="chorale")),
    ]
    batch = continue_batch(lm, requests)
    alone = [continue_batch(lm, [r])[0] for r in requests]
    assert [_keys(p) for p in batch] == [_keys(p) for p in alone]
    assert len({len(p.notes) for p in batch}) > 1  # rows stopped on their own


@pytest.mark.parametrize("ts", [(4, 4), (3, 4), (6, 8)])
def test_bars_are_respected(lm, ts):
    seed = _seed(C_MAJOR[:7], ts=ts, dur=0.75)  # ends mid-bar
    bar_beats = seed.beats_per_bar
    for rng in range(3):
        piece = continue_seed(lm, seed, 2, seed_rng=rng)
        end = (-(-seed.end_beat // bar_beats) + 2) * bar_beats
        assert piece.notes
        assert all(seed.end_beat <= n.start < end and n.end <= end + 1e-9 for n in piece.notes)
        # no end before the bars are filled: the last onset is within one longest shift of it
        assert max(n.start for n in piece.notes) >= end - CODEC.config.max_shift / 12


def test_no_seed_works(lm):
    piece = continue_seed(lm, None, 2, style="celtic", seed_rng=0)
    assert piece.notes and piece.style == "celtic"
    bar = piece.beats_per_bar
    assert all(0 <= n.start < 2 * bar and n.end <= 2 * bar for n in piece.notes)
    empty = continue_seed(lm, Piece(notes=(), tempo_bpm=70.0, time_signature=(3, 4)), 1, seed_rng=0)
    assert empty.notes and empty.tempo_bpm == 70.0 and empty.time_signature == (3, 4)


def test_no_seed_sounds_like_its_style(lm):
    """Metre, tempo and key from the style's corpus counts; key class 0 as training feeds an
    empty seed; the first note at once."""
    from engine.model.corpus.style_priors import load_style_priors

    priors = load_style_priors()["folk"]
    pieces = [continue_seed(lm, None, 2, style="folk", seed_rng=i) for i in range(40)]
    metres = {f"{p.time_signature[0]}/{p.time_signature[1]}" for p in pieces}
    assert metres <= set(priors["time_signatures"]) and len(metres) >= 3  # not always 4/4
    assert {f"{p.tempo_bpm:g}" for p in pieces} <= set(priors["tempi"])
    assert all(p.notes[0].start == 0.0 for p in pieces)  # no leading silence
    assert (
        plan_row(lm, GenerationRequest(None, ComposeOptions(bars=2, style="folk", rng_seed=0))).key
        == 0
    )
    # the result is in the drawn key (or its relative), as the decoder's own estimate hears it
    rows = [
        plan_row(lm, GenerationRequest(None, ComposeOptions(bars=2, style="folk", rng_seed=i)))
        for i in range(40)
    ]
    in_key = 0
    for row, piece in zip(rows, pieces, strict=True):
        tonic, mode = row.target_key
        relative = ((tonic + 9) % 12, "minor") if mode == "major" else ((tonic + 3) % 12, "major")
        in_key += key_for_generation(piece.notes) in {(tonic, mode), relative}
    assert in_key == len(pieces)
    # the drawn keys follow the corpus: G, F, D and C major are the commonest folk keys
    drawn = [row.target_key for row in rows]
    common = {(7, "major"), (5, "major"), (2, "major"), (0, "major")}
    assert sum(k in common for k in drawn) >= len(drawn) // 2
    assert continue_seed(lm, None, 2, style="folk", seed_rng=3) == pieces[3]  # reproducible


def test_collapse_guard_on_a_model_that_wants_one_pitch(lm):
    heads = lm.model.heads
    pitch_bias, shift_bias = heads.out[PITCH][-1].bias, heads.out[SHIFT][-1].bias
    saved = pitch_bias.detach().clone(), shift_bias.detach().clone()
    with torch.no_grad():
        pitch_bias[64 - CODEC.config.pitch_low] += 50.0  # E4, always, unless forbidden
        pitch_bias[65 - CODEC.config.pitch_low] += 45.0  # then F4
        shift_bias[6] += 50.0  # eighth notes: many notes per bar
    try:
        pieces = continue_batch(
            lm,
            [
                GenerationRequest(_seed(), ComposeOptions(bars=8, rng_seed=i, ending="open"))
                for i in range(2)
            ],
        )
    finally:
        with torch.no_grad():
            pitch_bias.copy_(saved[0])
            shift_bias.copy_(saved[1])
    for piece in pieces:
        pitches = [n.pitch for n in piece.notes]
        assert len(pitches) == 64  # 8 bars of eighths
        assert all(
            len(set(pitches[i : i + MAX_REPEATS + 1])) > 1
            for i in range(len(pitches) - MAX_REPEATS)
        )
        assert all(
            len(set(pitches[i : i + DISTINCT_WINDOW])) >= 3
            for i in range(len(pitches) - DISTINCT_WINDOW + 1)
        )


def test_key_estimate_and_key_bias(lm):
    assert key_for_generation(_seed(C_MAJOR).notes) == (0, "major")
    a_minor = [57, 59, 60, 62, 64, 65, 67, 69, 64, 60, 57, 57]
    assert key_for_generation(_seed(a_minor).notes) == (9, "minor")
    assert key_for_generation(()) is None
    assert scale_pitch_classes(_seed(C_MAJOR)) == {0, 2, 4, 5, 7, 9, 11}
    # the model's key class: 1 + tonic (major), 13 + tonic (minor), 0 unknown
    assert seed_key(CODEC.encode(_seed(C_MAJOR)), CODEC) == 1
    assert seed_key(CODEC.encode(_seed(a_minor)), CODEC) == 13 + 9
    assert seed_key(CODEC.encode(_seed([60, 62])), CODEC) == 0
    strict = continue_seed(lm, _seed(), 8, seed_rng=3, knobs=Knobs(key_penalty=30.0))
    assert {n.pitch % 12 for n in strict.notes} <= {0, 2, 4, 5, 7, 9, 11}
    loose = continue_seed(lm, _seed(), 8, seed_rng=3, knobs=Knobs(key_penalty=0.0, key_gravity=0.0))
    assert {n.pitch % 12 for n in loose.notes} - {0, 2, 4, 5, 7, 9, 11}  # random model strays


def test_key_gravity_pulls_towards_the_tonal_hierarchy(lm):
    bias = key_profile_bias(0, "major", 1.0)
    assert bias[0] == 0.0 and (bias[1:] < 0).all()  # the tonic is the strongest degree
    assert bias[7] > bias[2] > bias[1]  # dominant over supertonic over a chromatic note
    assert key_profile_bias(9, "minor", 2.0)[9] == 0.0
    assert key_of_class(1) == (0, "major") and key_of_class(13 + 9) == (9, "minor")
    assert key_of_class(0) is None

    def share_of_tonic_triad(gravity: float) -> float:
        notes = [
            n
            for rng in range(4)
            for n in continue_seed(
                lm, _seed(), 8, seed_rng=rng, knobs=Knobs(key_gravity=gravity)
            ).notes
        ]
        return sum(n.pitch % 12 in (0, 4, 7) for n in notes) / len(notes)

    assert share_of_tonic_triad(4.0) > share_of_tonic_triad(0.0) + 0.2
    with pytest.raises(BadParams, match="key_gravity"):
        continue_seed(lm, _seed(), 8, knobs=Knobs(key_gravity=-1.0))


def test_pitches_stay_near_the_seed(lm):
    piece = continue_seed(lm, _seed(), 8, seed_rng=5, temperature=2.0)
    assert all(60 - 12 <= n.pitch <= 72 + 12 for n in piece.notes)


def test_bad_params_are_refused(lm):
    for asked, knobs in (
        ({"temperature": 0.0}, Knobs()),
        ({"top_p": 0.0}, Knobs()),
        ({}, Knobs(top_k=-1)),
        ({"bars": 0}, Knobs()),
        ({"style": "dubstep"}, Knobs()),
        ({"ending": "never"}, Knobs()),
        ({"instrument": 128}, Knobs()),
    ):
        request = GenerationRequest(_seed(), ComposeOptions(**({"bars": 2} | asked)), knobs)
        with pytest.raises(BadParams):
            continue_batch(lm, [request])


def test_shipped_default_model_continues_in_key():
    from engine.music.metrics import is_collapsed, key_kept
    from engine.settings import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped checkpoint")
    lm = load_checkpoint(DEFAULT_MODEL_PATH)
    assert lm.meta["metrics"]["test"]["nll_per_note"] < 3.5
    g_major = [67, 69, 71, 72, 74, 72, 71, 69, 67, 71, 74, 79, 78, 76, 74, 72, 71, 69, 67, 67]
    seed = Piece(tuple(Note(i * 0.5, 0.5, p, 80) for i, p in enumerate(g_major)), style="folk")
    pieces = continue_batch(
        lm, [GenerationRequest(seed, ComposeOptions(bars=4, rng_seed=i)) for i in range(4)]
    )
    assert all(p.notes and not is_collapsed(p.notes) for p in pieces)
    assert sum(key_kept(seed, p) for p in pieces) >= 3


def test_a_four_part_chorale_keeps_four_voices():
    # issue 23: a chordal seed stays chordal (the shipped model alone thins a chorale to one or
    # two voices for bars at a time; the grammar's floor keeps the seed's fewest, 4 here)
    from engine.music.texture import fewest_sounding, sounding_counts
    from engine.settings import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped checkpoint")
    lm = load_checkpoint(DEFAULT_MODEL_PATH)
    chords = [(67, 62, 59, 43), (69, 62, 57, 42), (71, 62, 55, 43), (72, 64, 55, 48)] * 2
    seed = _chords([list(c) for c in chords])
    assert fewest_sounding(seed.notes) == 4
    for rng in range(4):
        counts = sounding_counts(continue_seed(lm, seed, 4, seed_rng=rng).notes)
        assert len(counts) >= 8 and all(c == 4 for c in counts), (rng, counts)


def test_the_bundled_melody_over_a_bass_is_continued_as_a_melody_over_a_bass():
    # the example a new user hears first (issue 23: it came back as chords in both hands)
    from engine.music.midi import load_seed
    from engine.music.texture import sounding_counts
    from engine.settings import DEFAULT_MODEL_PATH
    from tests.conftest import example_seed_bytes

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped checkpoint")
    lm = load_checkpoint(DEFAULT_MODEL_PATH)
    seed = load_seed(example_seed_bytes())
    assert set(sounding_counts(seed.notes)) == {2}
    two = 0
    for rng in range(4):
        counts = sounding_counts(continue_seed(lm, seed, 4, seed_rng=rng).notes)
        assert max(counts) <= 2  # never fuller than the seed (engine.music.texture)
        two += sum(c == 2 for c in counts) >= len(counts) / 2
    assert two >= 3  # and mostly two voices, not one
    # without the cap (Knobs(texture=False), the judge's --without-texture) a voice is held over
    loose = [
        continue_seed(lm, seed, 4, seed_rng=rng, knobs=Knobs(texture=False)) for rng in range(4)
    ]
    assert any(max(sounding_counts(p.notes)) > 2 for p in loose)


# --- the vectorised pieces against plain per-row rules ---------------------------------------
@pytest.mark.parametrize("ts", [(4, 4), (3, 4), (6, 8), (9, 4), (12, 8), (5, 16)])
def test_bar_positions_match_the_codec(ts):
    bar = CODEC.bar_ticks(ts)
    ticks = torch.arange(0, 5 * bar + 7)[:, None]  # (T, 1)
    bars = torch.full_like(ticks, bar)
    long_bars = bar > CODEC.config.max_position + 1
    got = bar_positions(ticks, bars, CODEC.config.max_position if long_bars else None)
    assert got[:, 0].tolist() == [CODEC.position(int(t), ts) for t in ticks[:, 0]]


def _sample_one(logits, top_k=0, top_p=1.0, u=0.5, allowed=None):
    n = len(logits)
    scaled = torch.tensor([logits], dtype=torch.float32)
    if allowed is not None:
        scaled = scaled.masked_fill(~torch.tensor([allowed]), float("-inf"))
    last = torch.tensor([[min(top_k or n, n) - 1]])
    return int(sample(scaled, last, torch.tensor([[top_p]]), torch.tensor([[u]])))


def test_sampling_is_the_inverse_cdf_of_the_kept_head():
    probs = torch.tensor([0.1, 0.4, 0.05, 0.3, 0.15])
    logits = probs.log().tolist()
    # a grid of uniforms lands on each class as often as its probability says
    grid = [(i + 0.5) / 1000 for i in range(1000)]
    counts = torch.bincount(torch.tensor([_sample_one(logits, u=u) for u in grid]), minlength=5)
    assert (counts - 1000 * probs).abs().max() <= 1
    assert _sample_one(logits, u=0.0) == 1  # the most likely class first
    assert {_sample_one(logits, top_k=2, u=u) for u in grid} == {1, 3}
    assert {_sample_one(logits, top_p=0.5, u=u) for u in grid} == {1, 3}  # 0.4 < 0.5 <= 0.7
    assert {_sample_one(logits, top_p=0.4, u=u) for u in grid} == {1}
    assert {_sample_one(logits, top_p=0.71, u=u) for u in grid} == {1, 3, 4}
    allowed = [True, False, True, False, True]
    assert {_sample_one(logits, allowed=allowed, u=u) for u in grid} == {0, 2, 4}
    assert _sample_one(logits, allowed=allowed, u=0.999999) == 2  # the last allowed class
    assert _sample_one([0.0, 0.0, 0.0], u=0.0) == 0  # ties keep their order


class _RulesOfOneRow:
    """The grammar as the note-by-note decoder applied it to one row, in plain Python."""

    def __init__(self, row) -> None:
        self.row, self.tick, self.sound_end = row, row.ref_tick, 0
        self.history, self.pitches, self.chord = list(row.history), [], []
        self.done, self.fired = False, set()  # which rules changed a mask
        self.ends: dict[int, int] = {}  # pitch -> the tick its latest note stops sounding

    def shift_ok(self) -> np.ndarray:
        r, ok = self.row, np.ones(CODEC.n_shift, dtype=bool)
        ok[CODEC.eos] = self.sound_end >= r.end_tick
        if not self.pitches:
            gap = r.seed_end - r.ref_tick
            if not len(r.seed_events):
                ok[1:] = False  # no seed: the first note at once
            elif gap <= CODEC.config.max_shift:
                ok[: max(0, gap)] = False
        elif len(self.chord) >= seed_chord_cap(r.seed_events):  # the seed's texture, at most
            ok[0] = False
            self.fired.add("chord")
        elif (  # the seed's texture, at least (when the bars are filled too)
            r.voice_floor > 1 and sum(end > self.tick for end in self.ends.values()) < r.voice_floor
        ):
            ok[1:] = False
            self.fired.add("floor")
        if not ok.any():
            ok[CODEC.config.max_shift] = True
        return ok

    def place(self, shift: int) -> int:
        r = self.row
        if shift == CODEC.eos:
            onset = r.end_tick
        else:
            onset = self.tick + shift
            if not self.pitches and onset < r.seed_end:
                onset += -(-(r.seed_end - onset) // r.bar) * r.bar
        self.onset, self.shift = onset, shift
        self.done = onset >= r.end_tick
        return CODEC.position(min(onset, r.end_tick), r.time_signature)

    def pitch_ok(self) -> np.ndarray:
        r, ok = self.row, self.row.pitch_ok.copy()
        chord = self.chord if self.shift == 0 and self.pitches else []
        if len(self.history) >= MAX_REPEATS and len(set(self.history[-MAX_REPEATS:])) == 1:
            ok[self.history[-1]] = False
            self.fired.add("repeat")
        recent = self.pitches[-(DISTINCT_WINDOW - 1) :]
        if len(recent) == DISTINCT_WINDOW - 1 and len(set(recent)) < MIN_DISTINCT:
            ok[list(set(recent))] = False
            self.fired.add("window")
        ok[chord] = False
        if not ok.any():
            self.fired.add("fallback")
            ok = r.pitch_ok.copy()
            ok[chord] = False
            if not ok.any():
                ok[:] = True
        return ok

    def add(self, pitch: int, duration: int) -> None:
        if self.onset != self.tick or not self.pitches:
            self.chord = []
        self.tick = self.onset
        self.chord.append(pitch)
        self.history.append(pitch)
        self.pitches.append(pitch)
        end = min(self.onset + CODEC.config.duration_bins[duration], self.row.end_tick)
        self.sound_end = max(self.sound_end, end)
        self.ends[pitch] = end


@pytest.mark.parametrize("narrow", [False, True])
def test_grammar_tensors_follow_the_per_row_rules(lm, narrow):
    """Random (allowed) choices, biased towards chords and repeated pitches so that every
    guard fires; the batched masks must equal the per-row rules at every step."""
    seeds = [
        _seed(),
        None,
        _seed([64] * 6, ts=(3, 4)),  # ends on repeats
        _seed(C_MAJOR[:5], dur=3.0),  # a long last note: the first onset moves by bars
        _seed([48, 84], ts=(6, 8)),
        _chords([[60, 64, 67], [62, 65, 69], [64, 67, 72], [59, 62, 67]]),  # never under 3 voices
    ]
    rows = [
        plan_row(lm, GenerationRequest(s, ComposeOptions(bars=8, rng_seed=i)))
        for i, s in enumerate(seeds)
    ]
    if narrow:  # ranges so small that the pitch fallbacks are needed
        for i, r in enumerate(rows):
            r.pitch_ok[:] = False
            r.pitch_ok[40 + i : 43 + i + i % 2] = True
    grammar = Grammar(lm, rows, torch.device("cpu"))
    assert grammar.fallback == narrow
    refs = [_RulesOfOneRow(r) for r in rows]
    rng = np.random.default_rng(0)

    def pick(ok: np.ndarray, favourites: list[int], odds: float) -> int:
        liked = [f for f in favourites if 0 <= f < len(ok) and ok[f]]
        if liked and rng.random() < odds:
            return int(rng.choice(liked))
        return int(rng.choice(np.flatnonzero(ok)))

    for t in range(400):
        live = [j for j, ref in enumerate(refs) if not ref.done]
        if not live:
            break
        shift_ok = (grammar.shift_mask(t) == 0).numpy()
        shifts = []
        for j, ref in enumerate(refs):
            ok = ref.shift_ok()
            if j in live:
                assert (shift_ok[j] == ok).all(), (t, j)
            # odd rows: chords; even rows: a melody on (mostly) two pitches
            liked = [0, 0, 0, 3, 6] if j % 2 else [3, 6]
            shifts.append(pick(ok, liked, 0.9) if j in live else 1)
        position = grammar.place(t, torch.tensor(shifts)[:, None])
        done = grammar.done[:, 0].tolist()
        forbidden = grammar.pitch_forbidden(t).numpy()
        pitches, durations = [], []
        for j, ref in enumerate(refs):
            if j not in live:
                pitches.append(0)
                durations.append(0)
                continue
            expected_position = ref.place(shifts[j])
            assert done[j] == ref.done, (t, j)
            if ref.done:
                pitches.append(0)
                durations.append(0)
                continue
            assert int(position[j]) == expected_position, (t, j)
            ok = ref.pitch_ok()
            assert (~forbidden[j] == ok).all(), (t, j)
            last = ref.history[-1] if ref.history else 40
            two = [40 + j, 42 + j]
            pitches.append(pick(ok, [last, *two], 0.97 if j % 2 == 0 else 0.7))
            durations.append(int(rng.integers(CODEC.n_duration)))
            ref.add(pitches[-1], durations[-1])
        grammar.add_pitch(t, torch.tensor(pitches)[:, None])
        grammar.add_duration(torch.tensor(durations)[:, None])
    assert all(ref.done for ref in refs)
    fired = set().union(*(ref.fired for ref in refs))
    assert {"chord", "repeat", "window", "floor"} <= fired
    assert ("fallback" in fired) == narrow


def test_big_batch_with_rows_leaving_equals_each_row_alone(lm):
    requests = [
        GenerationRequest(
            _seed(C_MAJOR[: 3 + i % 5], ts=ts),
            ComposeOptions(bars=bars, rng_seed=10 + i),
            Knobs(top_k=i % 3),
        )
        for i, (ts, bars) in enumerate(
            [((4, 4), 1), ((3, 4), 6), ((6, 8), 2), ((4, 4), 4), ((2, 4), 1), ((4, 4), 3)] * 2
        )
    ]
    batch = continue_batch(lm, requests)
    alone = [continue_batch(lm, [r])[0] for r in requests]
    assert [_keys(p) for p in batch] == [_keys(p) for p in alone]


@pytest.mark.parametrize("check_every", [3, 8])
def test_reading_done_rows_less_often_changes_no_note(lm, check_every):
    """The GPU reads how many rows are done every CHECK_EVERY steps, not every step: rows that
    finish in between decode on, masked out, and rows leave the batch later. Same notes."""
    requests = [
        GenerationRequest(
            _seed(C_MAJOR[: 2 + i % 6]), ComposeOptions(bars=1 + i % 4, rng_seed=40 + i, top_p=0.9)
        )
        for i in range(10)
    ] + [GenerationRequest(None, ComposeOptions(bars=2, rng_seed=7))]
    every_step = continue_batch(lm, requests, check_every=1)
    assert len({len(p.notes) for p in every_step}) > 3  # rows finish at many different steps
    sparse = continue_batch(lm, requests, check_every=check_every)
    assert [_keys(p) for p in sparse] == [_keys(p) for p in every_step]


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the tensor calls that make a GPU wait for its results (device -> host reads)."""

    READS = frozenset(
        {"item", "tolist", "numpy", "cpu", "nonzero", "masked_select", "unique", "__bool__",
         "__int__", "__float__", "__index__"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_the_gpu_cadence_reads_the_device_once_per_check_not_per_note(lm):
    """What would be a host synchronisation on a GPU, counted on the CPU: with CHECK_EVERY 8,
    one read of the done count every 8 steps, plus a bounded few per batch compaction and at
    the end; nothing per note (no .item(), no bool() of a tensor)."""
    from bench.generation_bench import count_steps

    requests = [
        GenerationRequest(
            _seed(C_MAJOR[: 2 + i % 6]), ComposeOptions(bars=4 + 3 * i, rng_seed=60 + i, top_p=0.9)
        )
        for i in range(12)
    ]
    reads = _HostReads()
    with reads:
        continue_batch(lm, requests, check_every=8)
    _, steps = count_steps(lm, lambda: continue_batch(lm, requests, check_every=8))
    assert steps > 40
    assert reads.counts["__int__"] == -(-steps // 8)  # the done count, every 8th step
    assert not {"item", "__bool__", "__float__", "masked_select", "unique"} & set(reads.counts)
    compactions = reads.counts.get("nonzero", 0)
    other = sum(n for name, n in reads.counts.items() if name != "__int__")
    assert other <= 8 * (compactions + 1), reads.counts  # per compaction, not per note


def test_seeds_of_very_different_lengths_are_encoded_in_groups_with_the_same_result(lm):
    from engine.model.generate.decode import encode_in_groups

    torch.manual_seed(3)
    lengths = [40, 2, 0, 38, 5, 1, 40, 3]  # three groups: (0, 1, 2), (3, 5), (38, 40, 40)
    cols = [CODEC.n_shift - 1, CODEC.n_pitch, CODEC.n_duration, CODEC.n_velocity, CODEC.n_position]
    seed = torch.stack([torch.randint(0, n, (len(lengths), 40)) for n in cols], dim=-1)
    seed_len = torch.tensor(lengths)
    style = torch.arange(len(lengths)) % CODEC.n_style
    key = torch.arange(len(lengths)) * 3 % 25
    with torch.no_grad():
        whole = lm.model.eval().encode(seed, seed_len, style, key)
        grouped = encode_in_groups(lm.model, seed, seed_len, style, key)
    assert torch.equal(grouped.mask, whole.mask) and torch.equal(grouped.key, whole.key)
    real = whole.mask[..., None]
    assert_close_to_scale(grouped.values * real, whole.values * real, SAME_MATH)
    assert_close_to_scale(grouped.keys * real, whole.keys * real, SAME_MATH)
    for (h, c), (wh, wc) in zip(grouped.state, whole.state, strict=True):
        assert_close_to_scale(h, wh, SAME_MATH)
        assert_close_to_scale(c, wc, SAME_MATH)


def test_a_note_beside_the_bass_is_the_melody_and_beside_the_melody_the_bass(tiny_lm):
    from engine.model.generate.grammar import Grammar
    from engine.music.midi import load_seed
    from tests.conftest import example_seed_bytes

    seed = load_seed(example_seed_bytes())
    row = plan_row(tiny_lm, GenerationRequest(seed, ComposeOptions(bars=2, rng_seed=0)))
    low = tiny_lm.codec.config.pitch_low
    assert row.voice_split == 54 - low
    loose = plan_row(tiny_lm, GenerationRequest(seed, ComposeOptions(bars=2), Knobs(texture=False)))
    assert loose.voice_split == -1
    grammar = Grammar(tiny_lm, [row], torch.device("cpu"))
    nothing = torch.zeros(1, tiny_lm.codec.n_pitch, dtype=torch.bool)
    grammar.onset = torch.tensor([[100]])
    grammar.recent_end[:, -1] = 124  # a bass note (C3) held across this onset
    grammar.recent_pitch[:, -1] = 48 - low
    allowed = ~grammar._keep_voices(nothing)[0]
    assert allowed.nonzero().min().item() == 55 - low  # only the melody's side
    grammar.recent_pitch[:, -1] = 64 - low  # a melody note (E4) instead
    allowed = ~grammar._keep_voices(nothing)[0]
    assert allowed.nonzero().max().item() == 54 - low  # only the bass's side
    grammar.recent_end[:, -1] = 100  # it ends as this onset begins: nothing sounds, no rule
    assert not grammar._keep_voices(nothing).any()
