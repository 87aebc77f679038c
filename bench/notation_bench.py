"""What a score costs per request: MusicXML, verovio's engraving and the PNG, for 16 and 32 bars,
measured beside the same music's audio render, OGG encode and piano roll, interleaved; and resvg
against cairosvg on the same SVG (cairosvg needs the system's libcairo: measured when present).

`python -m bench.notation_bench [--repeats 7]` prints a table; `run()` returns the figures.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import statistics
import time
from typing import Any

import pretty_midi

from engine.audio.encode import encode, normalize_loudness
from engine.audio.pianoroll import piano_roll_png
from engine.audio.score import engrave_svg, svg_to_png
from engine.audio.synth import get_renderer
from engine.music.musicxml import score_xml
from engine.music.notes import Note, Piece
from engine.music.result_midi import to_midi_bytes
from engine.settings import Settings

log = logging.getLogger(__name__)

TEMPO = 100.0
SEED_BARS = 4


def folk_melody(bars: int, seed: int = 0) -> Piece:
    """One line of eighths and quarters in 4/4, G major: the common request."""
    rng = random.Random(seed)
    notes, t, pitch = [], 0.0, 67
    while t < bars * 4:
        d = rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0])
        d = min(d, bars * 4 - t)
        pitch = max(60, min(81, pitch + rng.choice([-4, -3, -2, -1, 1, 2, 3, 5])))
        pc = pitch % 12
        if pc in (1, 3, 5, 8, 10):  # stay in G major (F sharp, no F)
            pitch += 1 if pc != 5 else 1
        notes.append(Note(t, d, pitch, 80))
        t += d
    return Piece(tuple(notes), tempo_bpm=TEMPO)


def two_hands(bars: int, seed: int = 0) -> Piece:
    """A bass in quarters under an eighth-note melody with chords: a busy piano page."""
    rng = random.Random(seed)
    notes = []
    for beat in range(bars * 4):
        notes.append(Note(float(beat), 1.0, 43 + rng.choice([0, 4, 7, 12]), 70))
        for half in (0.0, 0.5):
            notes.append(Note(beat + half, 0.5, 67 + rng.choice([0, 2, 4, 5, 7, 9, 11, 12]), 80))
            if rng.random() < 0.3:
                notes.append(Note(beat + half, 0.5, 62 + rng.choice([0, 2]), 70))
    return Piece(tuple(sorted(notes, key=lambda n: (n.start, n.pitch))), tempo_bpm=TEMPO)


def _split(piece: Piece) -> tuple[Piece, Piece]:
    at = SEED_BARS * 4.0
    return (
        Piece(tuple(n for n in piece.notes if n.start < at), tempo_bpm=TEMPO),
        Piece(tuple(n for n in piece.notes if n.start >= at), tempo_bpm=TEMPO),
    )


def _cairosvg():  # type: ignore[no-untyped-def]
    try:
        import cairosvg

        cairosvg.svg2png(
            bytestring=b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'
        )
        return cairosvg
    except Exception as exc:  # noqa: BLE001 - absent or without libcairo
        log.info("cairosvg not usable here: %s", exc)
        return None


def run(repeats: int = 7, bars: tuple[int, ...] = (16, 32)) -> dict[str, Any]:
    """Medians of `repeats` interleaved rounds per texture and length."""
    settings = Settings(_env_file=None)
    renderer = get_renderer(settings)
    cairo = _cairosvg()
    result: dict[str, Any] = {"repeats": repeats, "bars": list(bars), "notes": []}
    if cairo is None:
        result["notes"].append("cairosvg (needs the system's libcairo) not usable here")
    warm = two_hands(4)
    svg_to_png(engrave_svg(score_xml(*_split(warm), key=(7, "major"))))  # verovio's first load
    for texture, make in (("melody", folk_melody), ("two hands", two_hands)):
        for n_bars in bars:
            seed, cont = _split(make(n_bars))
            midi = to_midi_bytes(seed, cont)
            times: dict[str, list[float]] = {
                k: []
                for k in (
                    "xml",
                    "engrave",
                    "png",
                    "score",
                    "render",
                    "encode",
                    "pianoroll",
                    "cairo",
                )
            }
            for _ in range(repeats):
                t0 = time.perf_counter()
                xml = score_xml(seed, cont, key=(7, "major"), title="bench")
                t1 = time.perf_counter()
                svg = engrave_svg(xml)
                t2 = time.perf_counter()
                png = svg_to_png(svg)
                t3 = time.perf_counter()
                rendered = renderer.render(
                    pretty_midi.PrettyMIDI(io.BytesIO(midi)), program=None, max_seconds=600
                )
                t4 = time.perf_counter()
                loud = normalize_loudness(rendered.samples, rendered.sample_rate)
                t5 = time.perf_counter()
                encode(loud, rendered.sample_rate, "ogg", settings.upload_cap_bytes)
                t6 = time.perf_counter()
                piano_roll_png(seed, cont, title="bench")
                t7 = time.perf_counter()
                if cairo is not None:
                    cairo.svg2png(bytestring=svg.encode(), background_color="white")
                t8 = time.perf_counter()
                for key, dt in (
                    ("xml", t1 - t0),
                    ("engrave", t2 - t1),
                    ("png", t3 - t2),
                    ("score", t3 - t0),
                    ("render", t4 - t3),
                    ("encode", t6 - t5),
                    ("pianoroll", t7 - t6),
                    ("cairo", t8 - t7),
                ):
                    times[key].append(dt)
            name = f"{texture} {n_bars} bars"
            figures = {f"{k}_s": statistics.median(v) for k, v in times.items()}
            if cairo is None:
                del figures["cairo_s"]
            figures.update(
                notes=len(seed.notes) + len(cont.notes),
                music_s=rendered.samples.shape[0] / rendered.sample_rate,
                png_bytes=len(png),
                svg_bytes=len(svg),
            )
            result[name] = figures
    result["target_16_bars_s"] = 0.2
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run(args.repeats)
    print(f"Score per request, median of {r['repeats']} interleaved rounds (seconds)")
    head = ["music", "notes", "xml", "engrave", "png (resvg)", "score", "png (cairosvg)",
            "render", "ogg encode", "piano roll", "png KiB"]  # fmt: skip
    print(" | ".join(head))
    for name, f in r.items():
        if not isinstance(f, dict):
            continue
        cairo = f"{f['cairo_s']:.3f}" if "cairo_s" in f else "-"
        print(
            f"{name} | {f['notes']} | {f['xml_s']:.3f} | {f['engrave_s']:.3f} | {f['png_s']:.3f} | "
            f"{f['score_s']:.3f} | {cairo} | {f['render_s']:.3f} | {f['encode_s']:.3f} | "
            f"{f['pianoroll_s']:.3f} | {f['png_bytes'] / 1024:.0f}"
        )
    for note in r["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
