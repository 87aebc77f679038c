"""Continue a seed melody with a trained model: stateful, batched, reproducible sampling.

The encoder reads each seed once; then one decoder step per note, every row of a batch with its
own seed, length, temperature and random generator, stopping on its own. A grammar keeps the
output well formed (no end before the bars are filled, pitches in range, no stuck notes) and a soft
bias keeps the seed's key. Returns the continuation only, in the seed's timeline.

The parts: `plan` (each request's seed, style, key, range and end), `decode` (the loop, with
`grammar` and `sampling`), and here the requests in and the pieces out.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel
from engine.model.generate.decode import Batch, Segment, StepObserver, decode
from engine.model.generate.ending import ENDINGS
from engine.model.generate.plan import plan_row
from engine.model.generate.request import DEFAULT_KNOBS, MAX_BARS, GenerationRequest, Knobs, Row
from engine.music import catalog
from engine.music.keys import key_for_generation, relative_key
from engine.music.notes import Note, Piece
from engine.music.request import ComposeOptions
from engine.music.texture import cap_sounding, max_sounding

log = logging.getLogger(__name__)

CHECK_EVERY = 8  # on a GPU, steps between reads of how many rows are done (a host sync)


def _check(req: GenerationRequest) -> None:
    """The decoder's own sanity bounds (wider than what a user may ask: engine.music.catalog,
    checked by engine.service.options before a request is written)."""
    asked, knobs = req.options, req.knobs
    if not 1 <= asked.bars <= MAX_BARS:
        raise BadParams(f"bars must be between 1 and {MAX_BARS}, not {asked.bars}")
    if not 0.0 < asked.temperature <= 10.0:
        raise BadParams(f"temperature must be above 0 (and at most 10), not {asked.temperature}")
    if not 0.0 < asked.top_p <= 1.0:
        raise BadParams(f"top_p must be in (0, 1], not {asked.top_p}")
    if knobs.top_k < 0:
        raise BadParams(f"top_k must be 0 (off) or positive, not {knobs.top_k}")
    if not 0 <= knobs.key_penalty <= 100:
        raise BadParams(f"key_penalty must be between 0 and 100, not {knobs.key_penalty}")
    if not 0 <= knobs.key_gravity <= 10:
        raise BadParams(f"key_gravity must be between 0 and 10, not {knobs.key_gravity}")
    if asked.tempo is not None and not 1.0 <= asked.tempo <= 1000.0:
        raise BadParams(f"tempo must be between 1 and 1000 bpm, not {asked.tempo}")
    if asked.ending not in ENDINGS:
        raise BadParams(f"ending must be one of {', '.join(ENDINGS)}, not {asked.ending!r}")
    if not 0 <= asked.instrument <= 127:
        raise BadParams(f"program must be a General MIDI program 0..127, not {asked.instrument}")


def _finish(lm: LoadedModel, row: Row, events: np.ndarray, first_tick: int) -> Piece:
    """The row's continuation as a piece, in the tempo and instrument the request asked."""
    seed, asked = row.req.seed, row.req.options
    tempo = asked.tempo or row.tempo_bpm or (seed.tempo_bpm if seed is not None else 120.0)
    piece = lm.codec.decode(
        events,
        start_tick=first_tick if len(events) else row.ref_tick,
        tempo_bpm=tempo,
        time_signature=row.time_signature,
        program=asked.instrument,
        style=row.style_name,
    )
    end_beat = row.end_tick / lm.codec.config.ticks_per_beat
    notes = tuple(
        replace(n, duration=end_beat - n.start) if n.end > end_beat else n for n in piece.notes
    )
    if (
        row.req.knobs.texture and seed is not None and seed.notes
    ):  # the seed's texture: no fuller than its fullest onset
        notes = cap_sounding(notes, max(1, max_sounding(seed.notes)))
    if row.target_key is not None:
        notes = to_key(lm, notes, row.target_key)
    return replace(piece, notes=notes, meta={"rng_seed": str(row.rng_seed)})


def to_key(lm: LoadedModel, notes: tuple[Note, ...], target: tuple[int, str]) -> tuple[Note, ...]:
    """The notes moved by at most a tritone so that their estimated key becomes `target` (or
    its relative, when the notes are in the other mode: the same key signature), folded by
    octaves into the model's pitch range."""
    found = key_for_generation(Piece(notes).notes)
    if found is None:
        return notes
    tonic, mode = target if target[1] == found[1] else relative_key(*target)
    step = (tonic - found[0] + 6) % 12 - 6
    if step == 0:
        return notes
    moved = (replace(n, pitch=lm.codec.fold_pitch(n.pitch + step)) for n in notes)
    return tuple(sorted(moved, key=lambda n: (n.start, n.pitch)))


@torch.inference_mode()  # cheaper per op than no_grad: per note the decoder runs ~600 tiny ops
def continue_batch(
    lm: LoadedModel,
    requests: list[GenerationRequest],
    *,
    check_every: int | None = None,
    observer: StepObserver | None = None,
) -> list[Piece]:
    """Decode all requests together; each row's result equals decoding it alone.

    Everything per note stays on the model's device; the host only learns, once per step (every
    CHECK_EVERY steps on a GPU), how many rows are done, to stop or to drop them. `check_every`
    overrides that cadence (the tests run the GPU's on the CPU); the notes do not depend on it.
    `observer`: shown every pitch draw (a hook of the judge's: engine.model.generate.decode)."""
    if check_every is not None and check_every < 1:
        raise ValueError(f"check_every must be at least 1, not {check_every}")
    for req in requests:
        _check(req)
    if not requests:
        return []
    lm.model.eval()
    rows = [plan_row(lm, req) for req in requests]
    batch = Batch.start(lm, rows)
    if check_every is None:
        check_every = 1 if lm.device.type == "cpu" else CHECK_EVERY
    segments, first_tick = decode(batch, len(rows), check_every, observer)
    return _to_pieces(lm, rows, segments, first_tick, batch.decoder.offsets)


def _to_pieces(
    lm: LoadedModel,
    rows: list[Row],
    segments: list[Segment],
    first_tick: torch.Tensor,
    offsets: tuple[int, ...],
) -> list[Piece]:
    """Each row's notes, gathered from the segments it decoded in, as a Piece in the seed's
    timeline (`_finish`)."""
    notes: list[list[np.ndarray]] = [[] for _ in rows]
    for members, seg_made, seg_done in segments:
        ev = torch.stack(seg_made).cpu().numpy()  # (T, B', 8)
        keep = ~torch.stack(seg_done)[..., 0].cpu().numpy()  # (T, B'): before the row finished
        for j, i in enumerate(members):
            notes[i].append(ev[keep[:, j], j, :5])
    first = first_tick[:, 0].tolist()
    offset = np.asarray(offsets[:5], dtype=np.int64)
    return [
        _finish(lm, r, np.concatenate(notes[i]).reshape(-1, 5) - offset, first[i])
        for i, r in enumerate(rows)
    ]


def continue_seed(
    lm: LoadedModel,
    seed: Piece | None,
    bars: int,
    style: str | None = None,
    temperature: float = catalog.DEFAULT_TEMPERATURE,
    top_p: float = catalog.DEFAULT_TOP_P,
    seed_rng: int | None = None,
    *,
    program: int | None = None,
    tempo_bpm: float | None = None,
    knobs: Knobs = DEFAULT_KNOBS,
    ending: str = catalog.DEFAULT_ENDING,
    observer: StepObserver | None = None,
) -> Piece:
    """One request, spelt as arguments (the benchmarks' and the tests' shorthand): the
    continuation only (absolute beats, starting where the seed's sound stops), in the seed's
    tempo, time signature and program unless `tempo_bpm` or `program` say otherwise; the same
    `seed_rng` gives the same notes. `observer`: see `continue_batch`."""
    if program is None:
        program = seed.program if seed is not None else 0
    asked = ComposeOptions(
        bars=bars,
        style=style,
        temperature=temperature,
        top_p=top_p,
        instrument=program,
        tempo=tempo_bpm,
        rng_seed=seed_rng,
        ending=ending,
    )
    return continue_batch(lm, [GenerationRequest(seed, asked, knobs)], observer=observer)[0]
