"""Does the bundled example, Ode to Joy as a melody over a bass, come back as a melody over a bass?

`python -m bench.texture_example [--rng-seeds 10] [--bars 8]`: the shipped model continues
engine/data/examples/ode-to-joy.mid with each rng seed, with the seed's texture cap
(engine.music.texture) and without it (`Knobs(texture=False)`); prints, for each, how many
continuations keep two voices (bench.form.is_two_voice: at least half the onsets sound exactly
two notes, at most one in ten more), the most notes sounding at one onset, and how often a
two-note onset keeps the seed's registers (its lower note below the split between the seed's
bass and melody, its upper note above it).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.form import EPS, is_two_voice, sounding_counts
from engine.music.notes import Note


def two_note_onsets(notes: Sequence[Note]) -> list[tuple[int, int]]:
    """(lower, upper) pitch at each onset where exactly two notes sound."""
    pairs = []
    for t in sorted({n.start for n in notes}):
        sounding = sorted(n.pitch for n in notes if n.start <= t + EPS and n.end > t + EPS)
        if len(sounding) == 2:
            pairs.append((sounding[0], sounding[1]))
    return pairs


def register_split(seed: Sequence[Note]) -> float | None:
    """Halfway between the seed's highest lower note and lowest upper note at its two-note
    onsets; None where the two voices' ranges overlap."""
    pairs = two_note_onsets(seed)
    if not pairs or max(lo for lo, _ in pairs) >= min(hi for _, hi in pairs):
        return None
    return (max(lo for lo, _ in pairs) + min(hi for _, hi in pairs)) / 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.texture_example", description=__doc__)
    parser.add_argument("--rng-seeds", type=int, default=10)
    parser.add_argument("--bars", type=int, default=8)
    args = parser.parse_args(argv)
    import torch

    from engine.model.checkpoint import load_checkpoint
    from engine.model.generate.continuation import continue_seed
    from engine.model.generate.request import Knobs
    from engine.music.midi import load_seed
    from engine.settings import DEFAULT_MODEL_PATH

    torch.set_num_threads(1)
    lm = load_checkpoint(DEFAULT_MODEL_PATH)
    path = DEFAULT_MODEL_PATH.parent / "examples" / "ode-to-joy.mid"
    seed = load_seed(path.read_bytes(), name=path.name)
    split = register_split(seed.notes)
    print(
        f"seed: two voices {is_two_voice(seed.notes)}, at most {max(sounding_counts(seed.notes))}"
        f" sounding, its voices split at MIDI pitch {split}"
    )
    for label, knobs in (("with the texture cap", Knobs()), ("without", Knobs(texture=False))):
        outs = [
            continue_seed(lm, seed, args.bars, seed_rng=r, knobs=knobs).notes
            for r in range(args.rng_seeds)
        ]
        kept = sum(is_two_voice(o) for o in outs)
        fullest = max(max(sounding_counts(o), default=0) for o in outs)
        pairs = [p for o in outs for p in two_note_onsets(o)]
        kept_registers = sum(split is not None and lo < split < hi for lo, hi in pairs)
        print(
            f"{label}: {kept} of {len(outs)} keep two voices; at most {fullest} sounding; "
            f"{kept_registers} of {len(pairs)} two-note onsets keep the seed's registers"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
