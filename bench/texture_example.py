"""Does the bundled example, Ode to Joy as a melody over a bass, come back as a melody over a bass?

`python -m bench.texture_example [--rng-seeds 10] [--bars 8]`: the shipped model continues
engine/data/examples/ode-to-joy.mid with each rng seed, with the seed's texture cap
(engine.music.texture) and without it (`Knobs(texture=False)`); prints, for each, how many
continuations keep two voices (bench.form.is_two_voice: at least half the onsets sound exactly
two notes, at most one in ten more) and the most notes sounding at one onset.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.form import is_two_voice, sounding_counts


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
    print(
        f"seed: two voices {is_two_voice(seed.notes)}, at most {max(sounding_counts(seed.notes))}"
    )
    for label, knobs in (("with the texture cap", Knobs()), ("without", Knobs(texture=False))):
        outs = [
            continue_seed(lm, seed, args.bars, seed_rng=r, knobs=knobs).notes
            for r in range(args.rng_seeds)
        ]
        kept = sum(is_two_voice(o) for o in outs)
        fullest = max(max(sounding_counts(o), default=0) for o in outs)
        print(f"{label}: {kept} of {len(outs)} keep two voices; at most {fullest} sounding")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
