"""Rendering speed: our reused FluidSynth against the `fluidsynth -F` command line, and the whole
audio + picture path for 30 s of 4-voice music.

`python -m bench.render_bench [--repeats 5]` prints a table; `run()` returns the figures.
"""

from __future__ import annotations

import argparse
import io
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi

from engine.audio.encode import encode, integrated_loudness, normalize_loudness, true_peak
from engine.audio.pianoroll import piano_roll_png
from engine.audio.synth import get_renderer
from engine.music.notes import Note, Piece
from engine.settings import Settings

log = logging.getLogger(__name__)

SECONDS = 30.0
TEMPO = 120.0
PIPELINE_TARGET_S = 0.40  # issue #19: the whole audio + picture path for 30 s


def four_voice_midi(seconds: float = SECONDS, seed: int = 0) -> pretty_midi.PrettyMIDI:
    """Dense 4-voice piano: eighths to halves at 120 BPM, one instrument per voice."""
    rng = np.random.default_rng(seed)
    midi = pretty_midi.PrettyMIDI(initial_tempo=TEMPO)
    for voice in range(4):
        inst = pretty_midi.Instrument(program=0, name="seed" if voice == 0 else f"voice {voice}")
        t = 0.0
        while t < seconds:
            d = float(rng.choice([0.25, 0.5, 1.0]))
            pitch = int(43 + 12 * voice + rng.integers(0, 12))
            inst.notes.append(
                pretty_midi.Note(int(rng.integers(60, 110)), pitch, t, min(t + d, seconds))
            )
            t += d
        midi.instruments.append(inst)
    return midi


def _pieces(midi: pretty_midi.PrettyMIDI) -> tuple[Piece, Piece]:
    """Voice 0's first 8 bars as the seed, everything after as the continuation."""
    spb = 60.0 / TEMPO
    notes = sorted(
        (Note(n.start / spb, (n.end - n.start) / spb, n.pitch, n.velocity)
         for inst in midi.instruments for n in inst.notes),
        key=lambda n: (n.start, n.pitch),
    )  # fmt: skip
    split = 32.0  # beats
    seed = Piece(tuple(n for n in notes if n.start < split), tempo_bpm=TEMPO)
    cont = Piece(tuple(n for n in notes if n.start >= split), tempo_bpm=TEMPO)
    return seed, cont


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(repeats: int = 5) -> dict[str, Any]:
    """Medians of `repeats` runs. RTF = seconds of music per second of wall time (higher is
    faster). Keys absent when FluidSynth (library or command line) is missing; see `notes`."""
    settings = Settings(_env_file=None)
    sf2 = str(settings.soundfont_path)
    midi = four_voice_midi()
    buf = io.BytesIO()
    midi.write(buf)
    midi_bytes = buf.getvalue()
    result: dict[str, Any] = {
        "music_s": SECONDS,
        "repeats": repeats,
        "soundfont": sf2,
        "sample_rate": settings.sample_rate,
        "notes": [],
    }

    renderer = get_renderer(settings)  # FluidSynth unless libfluidsynth is missing
    result["backend"] = renderer.backend
    renderer.render(midi, program=None, max_seconds=settings.max_audio_s)  # warm

    def ours() -> None:
        # The worker's path to samples: parse the MIDI bytes, render with the loaded SoundFont.
        parsed = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
        renderer.render(parsed, program=None, max_seconds=settings.max_audio_s)

    cli = shutil.which("fluidsynth")
    with tempfile.TemporaryDirectory() as tmp:
        mid_path = Path(tmp) / "bench.mid"
        mid_path.write_bytes(midi_bytes)
        wav_path = Path(tmp) / "out.wav"
        command = [cli or "fluidsynth", "-F", str(wav_path), "-ni", sf2, str(mid_path),
                   "-r", str(settings.sample_rate)]  # fmt: skip

        def command_line() -> None:
            subprocess.run(command, check=True, capture_output=True)

        # Interleaved, so that load from other processes hits both alike.
        ours_times, cli_times = [], []
        for _ in range(repeats):
            ours_times.append(_timed(ours))
            if cli and renderer.backend == "fluidsynth":
                cli_times.append(_timed(command_line))
    result["ours_render_s"] = statistics.median(ours_times)
    result["ours_rtf"] = SECONDS / result["ours_render_s"]
    if cli_times:
        result["cli_render_s"] = statistics.median(cli_times)
        result["cli_rtf"] = SECONDS / result["cli_render_s"]
        result["rtf_ratio"] = result["ours_rtf"] / result["cli_rtf"]
        result["cli_command"] = " ".join(["fluidsynth", *command[1:]])
    else:
        result["notes"].append(
            "fluidsynth command line or libfluidsynth missing: no side-by-side figure"
        )

    # The whole path a finished request takes, stage by stage: before (pyloudnorm, matplotlib)
    # and after (engine.audio.encode, engine.audio.pianoroll) in turns.
    seed, cont = _pieces(midi)
    title = "Motif bench · 30 s · 4 voices"
    paths = {"after": (normalize_loudness, piano_roll_png, True),
             "before": (_normalize_before, _matplotlib_piano_roll(), False)}  # fmt: skip
    stages = {(p, k): [] for p in paths for k in ("render", "loudness", "encode", "pianoroll")}
    totals: dict[str, list[float]] = {p: [] for p in paths}
    sizes: dict[str, tuple[int, int]] = {}
    for i in range(repeats + 1):  # the first round warms imports, fonts and caches: dropped
        for path, (normalize, draw, mono_when_same) in paths.items():
            t0 = time.perf_counter()
            parsed = pretty_midi.PrettyMIDI(io.BytesIO(midi_bytes))
            rendered = renderer.render(parsed, program=None, max_seconds=settings.max_audio_s)
            t1 = time.perf_counter()
            loud = normalize(rendered.samples, rendered.sample_rate)
            t2 = time.perf_counter()
            encoded = encode(loud, rendered.sample_rate, settings.audio_format,
                             settings.upload_cap_bytes, mono_when_same=mono_when_same)  # fmt: skip
            t3 = time.perf_counter()
            png = draw(seed, cont, title=title)
            t4 = time.perf_counter()
            sizes[path] = (len(encoded.data), len(png))
            if i == 0:
                continue
            for key, dt in zip(("render", "loudness", "encode", "pianoroll"),
                               (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):  # fmt: skip
                stages[path, key].append(dt)
            totals[path].append(t4 - t0)
    for path in paths:
        prefix = "" if path == "after" else "before_"
        result[prefix + "pipeline_s"] = statistics.median(totals[path])
        for (p, key), v in stages.items():
            if p == path:
                result[f"{prefix}{key}_s"] = statistics.median(v)
        result[prefix + "requests_per_s"] = 1 / result[prefix + "pipeline_s"]
    result["pipeline_target_s"] = PIPELINE_TARGET_S
    result["audio_bytes"], result["png_bytes"] = sizes["after"]
    result["before_audio_bytes"], result["before_png_bytes"] = sizes["before"]
    result["audio_format"] = encoded.fmt
    result["loudness_ideas"] = loudness_ideas(rendered.samples, rendered.sample_rate, repeats)
    result["with_score"] = with_score(midi_bytes, seed, cont, title, settings, repeats)
    return result


def with_score(
    midi_bytes: bytes, seed: Piece, cont: Piece, title: str, settings: Settings, repeats: int
) -> dict[str, Any]:
    """The path as engine.worker.rendering.render_request takes it: audio (engine.audio.encode.render_audio),
    piano roll and score picture, one after the other, against the pictures drawn in a second
    thread while the audio is made (libvorbis, FluidSynth and resvg run outside the GIL part of
    the time); in turns, medians. Also: two SHA-256s of 64 MiB in two threads against one,
    which says how much of a second core this process could get during the run."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    from engine.audio.encode import render_audio
    from engine.audio.score import engrave_result

    pool = ThreadPoolExecutor(max_workers=2)

    def pictures() -> tuple[bytes, Any]:
        return (piano_roll_png(seed, cont, title=title),
                engrave_result(midi_bytes, seed, cont, title=title))  # fmt: skip

    def sequential() -> None:
        render_audio(midi_bytes, settings)
        pictures()

    def overlapped() -> None:
        drawn = pool.submit(pictures)
        render_audio(midi_bytes, settings)
        drawn.result()

    data = b"\0" * (64 << 20)

    def one_hash() -> None:
        hashlib.sha256(data).digest()

    def two_hashes() -> None:
        other = pool.submit(one_hash)
        one_hash()
        other.result()

    times: dict[str, list[float]] = {k: [] for k in ("sequential", "overlapped", "one", "two")}
    for i in range(repeats + 1):
        for key, fn in (("sequential", sequential), ("overlapped", overlapped),
                        ("one", one_hash), ("two", two_hashes)):  # fmt: skip
            dt = _timed(fn)
            if i:
                times[key].append(dt)
    pool.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"sequential_s": med["sequential"], "overlapped_s": med["overlapped"],
            "overlap_speedup": med["sequential"] / med["overlapped"],
            "second_core": 2 - med["two"] / med["one"]}  # fmt: skip


def _normalize_before(samples: np.ndarray, rate: int) -> np.ndarray:
    """engine.audio.encode.normalize_loudness as it was: pyloudnorm's meter, then the same peak cap."""
    import pyloudnorm

    loudness = pyloudnorm.Meter(rate).integrated_loudness(samples.astype(np.float64))
    gain = min(10 ** ((-16.0 - loudness) / 20), 10 ** (-1.0 / 20) / true_peak(samples))
    return (samples * gain).astype(np.float32)


def _matplotlib_piano_roll():  # type: ignore[no-untyped-def]
    from bench.pianoroll_matplotlib import piano_roll_png as before

    return before


def _pyebur128_lufs(samples: np.ndarray, rate: int) -> float:
    import pyebur128

    state = pyebur128.R128State(samples.shape[1], rate, pyebur128.MeasurementMode.MODE_I)
    state.add_frames(np.ascontiguousarray(samples, dtype=np.float64).ravel(), samples.shape[0])
    return float(pyebur128.get_loudness_global(state))


def loudness_ideas(samples: np.ndarray, rate: int, repeats: int) -> dict[str, Any]:
    """Integrated loudness of the same rendered audio: pyloudnorm (the reference), ours, and
    the compiled libebur128 (pyebur128, when installed): median seconds and LU from pyloudnorm."""
    import pyloudnorm

    meters = {
        "pyloudnorm": lambda: pyloudnorm.Meter(rate).integrated_loudness(
            samples.astype(np.float64)
        ),
        "ours": lambda: integrated_loudness(samples, rate),
    }
    try:
        import pyebur128  # noqa: F401
    except ImportError:
        pass
    else:
        meters["pyebur128"] = lambda: _pyebur128_lufs(samples, rate)
    times: dict[str, list[float]] = {k: [] for k in meters}
    values: dict[str, float] = {}
    for _ in range(max(repeats, 3)):
        for name, fn in meters.items():
            t0 = time.perf_counter()
            values[name] = float(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: {"s": statistics.median(times[name]), "lufs": values[name],
                   "lu_from_pyloudnorm": values[name] - values["pyloudnorm"]}
            for name in meters}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    r = run(args.repeats)
    print(f"Render, {r['music_s']:.0f} s of 4-voice piano, {r['sample_rate']} Hz, "
          f"{Path(r['soundfont']).name}, median of {r['repeats']}")  # fmt: skip
    print(f"{'':32}{'wall s':>9}{'RTF (x real time)':>20}")
    print(
        f"{'ours (' + r['backend'] + ', reused)':32}{r['ours_render_s']:9.3f}{r['ours_rtf']:20.1f}"
    )
    if "cli_rtf" in r:
        print(f"{'fluidsynth -F (command line)':32}{r['cli_render_s']:9.3f}{r['cli_rtf']:20.1f}")
        print(f"ratio ours/CLI in RTF: {r['rtf_ratio']:.2f} (target >= 1)")
    for note in r["notes"]:
        print(f"note: {note}")
    print()
    print(f"Whole path for {r['music_s']:.0f} s (median of {r['repeats']}, in turns):")
    print(f"  {'':10}{'before':>9}{'after':>9}")
    for key in ("render", "loudness", "encode", "pianoroll", "pipeline"):
        print(f"  {key:10}{r['before_' + key + '_s']:9.3f}{r[key + '_s']:9.3f}")
    print(
        f"  requests/s per render worker: {r['before_requests_per_s']:.2f} -> "
        f"{r['requests_per_s']:.2f}   ({r['audio_format']} {r['audio_bytes'] / 1024:.0f} KiB, "
        f"png {r['png_bytes'] / 1024:.0f} KiB)"
    )
    w = r["with_score"]
    print(
        f"  with the score picture (render_request's path): sequential {w['sequential_s']:.3f} s, "
        f"pictures in a thread {w['overlapped_s']:.3f} s ({w['overlap_speedup']:.2f}x; a second "
        f"core's share free to this process: {w['second_core']:.2f})"
    )
    for name, v in r["loudness_ideas"].items():
        print(
            f"  loudness {name:12}{v['s']:8.3f} s  {v['lufs']:8.3f} LUFS "
            f"({v['lu_from_pyloudnorm']:+.4f} LU)"
        )


if __name__ == "__main__":
    main()
