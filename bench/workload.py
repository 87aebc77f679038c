"""What the benchmarks run on: the model, the music, the machine, and side-by-side timing.

The shipped model and corpus when they exist; otherwise a freshly initialised model of the default
size (decode and training speed do not depend on the weights) and synthetic tunes. Every result
says which it used.
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from engine.model.events import EventCodec
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.music.notes import Note, Piece
from engine.settings import DEFAULT_CORPUS_PATH, DEFAULT_MODEL_PATH

EXAMPLE_SEED = (
    Path(__file__).resolve().parent.parent / "engine" / "data" / "examples" / "ode-to-joy.mid"
)


# --- the machine --------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
    }


# --- timing -------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(
    subjects: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, list[tuple[float, Any]]]:
    """(seconds, result) of every subject, `repeats` times, in turns (a, b, a, b, ...) so that
    load from other processes falls on all of them alike."""
    out: dict[str, list[tuple[float, Any]]] = {name: [] for name in subjects}
    for _ in range(repeats):
        for name, fn in subjects.items():
            out[name].append(timed(fn))
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


# --- the model ----------------------------------------------------------------------------------
def default_sizes() -> dict[str, Any]:
    """The model `motif train` builds fresh (engine.model.train.config.TrainConfig's defaults)."""
    from engine.model.generate.plan import N_KEY
    from engine.model.train.config import TrainConfig

    d = TrainConfig()
    return {"d_embed": d.d_embed, "hidden": d.hidden, "layers": d.layers, "dropout": d.dropout,
            "attention": d.attention, "n_key": N_KEY if d.key_conditioning else 0}  # fmt: skip


def fresh_model(seed: int = 0, **sizes: Any) -> LoadedModel:
    """An untrained model of the default size (or `sizes`), in eval mode."""
    torch.manual_seed(seed)
    codec = EventCodec()
    cfg = ModelConfig.for_codec(codec, **{**default_sizes(), **sizes})
    return LoadedModel(model=MotifSeq2Seq(cfg).eval(), codec=codec, config=cfg,
                       meta={"version": "fresh-untrained"})  # fmt: skip


@dataclass
class ModelChoice:
    lm: LoadedModel
    path: Path | None  # a checkpoint file (for subprocesses); None until `file()` writes one
    label: str

    def file(self, folder: Path) -> Path:
        """A checkpoint of this model that a worker subprocess can load."""
        if self.path is None:
            self.path = save_checkpoint(
                Path(folder) / "bench-model.pt", self.lm.model, self.lm.config,
                self.lm.codec.config, {"version": "bench-fresh"},
            )  # fmt: skip
        return self.path


def describe(lm: LoadedModel) -> str:
    c = lm.config
    return (f"d_embed {c.d_embed}, hidden {c.hidden}, {c.layers}+{c.layers} layers, "
            f"{lm.model.num_params() / 1e6:.1f} M params")  # fmt: skip


def motif_model(path: str | Path | None = None) -> ModelChoice:
    """The checkpoint at `path`, else the shipped default, else a fresh default-size model."""
    path = Path(path) if path else DEFAULT_MODEL_PATH
    if path.is_file():
        lm = load_checkpoint(path, device="cpu")
        version = lm.meta.get("version", "?")
        return ModelChoice(lm, path, f"{path.name} (version {version}; {describe(lm)})")
    lm = fresh_model()
    return ModelChoice(lm, None, f"fresh untrained model of the default size ({describe(lm)}); "
                                 f"{path.name} absent")  # fmt: skip


# --- the music ----------------------------------------------------------------------------------
def synthetic_pieces(n: int = 24, notes: int | tuple[int, int] = 128, seed: int = 0) -> list[Piece]:
    """Tunes with real-looking steps and rhythms: scales, leaps, varied note lengths. `notes`: per
    piece, or a (low, high) range drawn per piece (the tests' tiny training runs)."""
    rng = random.Random(seed)
    scale = [0, 2, 4, 5, 7, 9, 11]
    styles = ["folk", "celtic", "chorale", "renaissance"]
    pieces = []
    for i in range(n):
        tonic = 60 + rng.choice([-5, -3, 0, 2, 5])
        length = notes if isinstance(notes, int) else rng.randint(*notes)
        t, out, degree = 0.0, [], 0
        for _ in range(length):
            degree = max(-7, min(9, degree + rng.choice([-2, -1, -1, 1, 1, 2, 0, 3])))
            octave, step = divmod(degree, 7)
            dur = rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 0.25, 2.0])
            out.append(Note(t, dur * 0.95, tonic + 12 * octave + scale[step],
                            rng.choice([64, 80, 96])))  # fmt: skip
            t += dur
        pieces.append(Piece(tuple(out), tempo_bpm=100.0, style=styles[i % 4],
                            name=f"synthetic-{i}"))  # fmt: skip
    return pieces


def music(n: int, corpus_path: str | Path | None = None) -> tuple[list[Piece], str]:
    """`n` pieces of the corpus's test split, the styles in turn and the longest of each first
    (the corpus may be absent: then synthetic tunes), and a label saying which."""
    path = Path(corpus_path) if corpus_path else DEFAULT_CORPUS_PATH
    if path.is_file():
        from engine.model.corpus.load import load_corpus

        corpus = load_corpus(path)
        split = "test" if len(corpus.indices("test")) else None
        by_style: dict[str | None, list[Piece]] = {}
        for piece in corpus.pieces(split):
            by_style.setdefault(piece.style, []).append(piece)
        queues = [sorted(v, key=lambda p: -len(p.notes)) for _, v in sorted(by_style.items(),
                  key=lambda kv: str(kv[0]))]  # fmt: skip
        pieces: list[Piece] = []
        while len(pieces) < n and any(queues):
            for q in queues:
                if q and len(pieces) < n:
                    pieces.append(q.pop(0))
        if pieces:
            styles = ", ".join(sorted({str(p.style) for p in pieces}))
            return pieces, (f"{path.name}: {len(pieces)} {split or 'all'}-split pieces, longest "
                            f"of each style in turn ({styles})")  # fmt: skip
    return synthetic_pieces(n), f"{n} synthetic tunes of 128 notes ({path.name} absent)"


def music_source(corpus_path: str | Path | None = None) -> str:
    path = Path(corpus_path) if corpus_path else DEFAULT_CORPUS_PATH
    if path.is_file():
        return f"{path} (test split: the longest pieces of each style in turn)"
    return f"synthetic tunes of 128 notes ({path.name} absent)"


def first_onsets(piece: Piece, onsets: int) -> Piece:
    """The piece's notes up to its `onsets`-th distinct onset (chords count once)."""
    starts = sorted({round(n.start, 6) for n in piece.notes})
    if len(starts) <= onsets:
        return piece
    cut = starts[onsets]
    return Piece(piece.notes_between(end=cut), piece.tempo_bpm,
                 piece.time_signature, piece.program, piece.name, piece.style)  # fmt: skip


def first_bars(piece: Piece, bars: int) -> Piece:
    return Piece(piece.notes_between(end=bars * piece.beats_per_bar), piece.tempo_bpm,
                 piece.time_signature, piece.program, piece.name, piece.style)  # fmt: skip


def rss_high_water_kib() -> int:
    """This process's peak resident set (VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


def plain(obj: Any) -> Any:
    """Results as JSON-friendly values (dataclasses, numpy scalars, paths)."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
