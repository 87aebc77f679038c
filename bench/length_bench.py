"""Cost by length: generation and the render stage (audio, piano roll, score pages and PDF) for
8, 64 and 256 bars of continuation of the bundled example seed, side by side.

The render stage is timed as engine.worker.rendering takes it, stage by stage. Engraving is
verovio laying out every page once and resvg rasterising each page once (the chat pages and the
PDF share the rasters), so it grows linearly with the bars.

`python -m bench.length_bench [--repeats 3] [--bars 8 64 256] [--sample-rate 44100]` prints a
table (`--sample-rate`: other than the setting's, for a side by side); `run()` returns the figures.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from bench import workload
from engine.audio.encode import render_audio
from engine.audio.pianoroll import piano_roll_png
from engine.audio.score import engrave_score, result_key
from engine.model.generate.continuation import continue_seed
from engine.music.midi import piece_from_midi_file
from engine.music.musicxml import score_xml
from engine.music.result_midi import split_result, to_midi_bytes
from engine.settings import Settings

log = logging.getLogger(__name__)

SEED = Path(__file__).resolve().parent.parent / "engine" / "data" / "examples" / "ode-to-joy.mid"
TARGET_64_BARS_S = 2.0  # issue #25: audio + pictures + score of a 64-bar result


def run(
    repeats: int = 3,
    bars: tuple[int, ...] = (8, 64, 256),
    model_path: str | None = None,
    sample_rate: int | None = None,
) -> dict[str, Any]:
    """Medians of `repeats` rounds per length (the first, untimed, warms imports and fonts)."""
    rate = {} if sample_rate is None else {"sample_rate": sample_rate}
    settings = Settings(_env_file=None, **rate)
    lm = workload.motif_model(model_path).lm
    seed = piece_from_midi_file(SEED)
    result: dict[str, Any] = {"repeats": repeats, "bars": list(bars), "seed": SEED.name,
                              "sample_rate": settings.sample_rate}  # fmt: skip
    for n in bars:
        times: dict[str, list[float]] = {
            k: [] for k in ("generate", "audio", "pianoroll", "xml", "score", "render")
        }
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            cont = continue_seed(lm, seed, n, seed_rng=i)
            t1 = time.perf_counter()
            midi = to_midi_bytes(seed, cont)
            audio = render_audio(midi, settings)
            t2 = time.perf_counter()
            s, c = split_result(midi)
            piano_roll_png(s, c, title="bench")
            t3 = time.perf_counter()
            xml = score_xml(s, c, key=result_key(midi, s, c), title="bench")
            t4 = time.perf_counter()
            score = engrave_score(xml)
            t5 = time.perf_counter()
            if i == 0:
                continue
            for key, dt in (("generate", t1 - t0), ("audio", t2 - t1), ("pianoroll", t3 - t2),
                            ("xml", t4 - t3), ("score", t5 - t4), ("render", t5 - t1)):  # fmt: skip
                times[key].append(dt)
        result[f"{n} bars"] = {
            **{f"{k}_s": statistics.median(v) for k, v in times.items()},
            "notes": len(cont.notes),
            "music_s": audio.seconds,
            "pages": score.page_count,
            "bars_total": score.bars_total,
            "bars_shown": score.bars_shown,
            "chat_png_kib": [round(len(p) / 1024) for p in score.pages],
            "pdf_kib": round(len(score.pdf) / 1024),
        }
    result["target_64_bars_s"] = TARGET_64_BARS_S
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bars", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--model", default=None)
    parser.add_argument("--sample-rate", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run(args.repeats, tuple(args.bars), args.model, args.sample_rate)
    print(f"Generation and render stage by length, {r['seed']} seed, audio at "
          f"{r['sample_rate']} Hz, median of {r['repeats']}")  # fmt: skip
    print("| bars | notes | audio s | generate | render (all) | audio | piano roll | score "
          "(pages + PDF) | pages | bars in chat | chat PNG KiB | PDF KiB |")  # fmt: skip
    print("|" + "---|" * 12)
    for n in r["bars"]:
        f = r[f"{n} bars"]
        print(
            f"| {n} | {f['notes']} | {f['music_s']:.0f} | {f['generate_s']:.2f} s | "
            f"{f['render_s']:.2f} s | {f['audio_s']:.2f} s | {f['pianoroll_s']:.2f} s | "
            f"{f['xml_s'] + f['score_s']:.2f} s | {f['pages']} | {f['bars_shown']} of "
            f"{f['bars_total']} | {f['chat_png_kib']} | {f['pdf_kib']} |"
        )


if __name__ == "__main__":
    main()
