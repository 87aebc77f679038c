"""The training corpus: music21's bundled folk tunes, chorales and Palestrina, parsed once into
one compact .npz (notes on the 12-ticks-per-beat grid) that training and evaluation load fast.

Build: `python -m engine.model.corpus --out engine/data/corpus.npz [--max-per-collection N]
[--limit COLLECTION=N ...]` (`motif corpus build` runs the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import NotFound
from engine.music.notes import Note, Piece
from engine.settings import get_settings

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
CORPUS_FORMAT_VERSION = 1


@dataclass
class CorpusStats:
    pieces: dict[str, int] = field(default_factory=dict)  # per collection
    failures: dict[str, int] = field(default_factory=dict)  # per collection
    failure_reasons: dict[str, int] = field(default_factory=dict)  # "repeats", "parse", ...
    splits: dict[str, int] = field(default_factory=dict)
    halved_note_values: int = 0  # pieces rewritten in shorter note values
    total_notes: int = 0
    build_seconds: float = 0.0
    file_bytes: int = 0

    @property
    def total_pieces(self) -> int:
        return sum(self.pieces.values())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CorpusStats:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Corpus:
    """The built corpus in memory; `pieces()` gives `Piece`s, the arrays stay available."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with np.load(self.path, allow_pickle=False) as data:
            self._a = {key: data[key] for key in data.files}
        if int(self._a["format_version"]) != CORPUS_FORMAT_VERSION:
            raise ValueError(f"{self.path}: corpus format {int(self._a['format_version'])}")
        self.ticks_per_beat = int(self._a["ticks_per_beat"])
        self.stats = CorpusStats.from_dict(json.loads(str(self._a["stats"])))
        self.stats.file_bytes = self.path.stat().st_size
        self.content_hash = file_sha256(self.path)
        self._all_styles = tuple(str(s) for s in self._a["styles"])

    @property
    def styles(self) -> tuple[str, ...]:
        """The style labels present in the corpus."""
        return self._all_styles

    def __len__(self) -> int:
        return len(self._a["offsets"]) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        """The file's arrays by name, all but its summary ("stats"), for writing a changed copy
        (`engine.model.corpus.build.write_corpus_file`)."""
        return {key: value.copy() for key, value in self._a.items() if key != "stats"}

    @property
    def notes(self) -> np.ndarray:
        """All notes, (M, 4) int32: onset_tick, duration_tick, pitch, velocity."""
        return self._a["notes"]

    @property
    def offsets(self) -> np.ndarray:
        """(P + 1,) int64: piece p's notes are notes[offsets[p]:offsets[p + 1]]."""
        return self._a["offsets"]

    def indices(self, split: str | None = "train", style: str | None = None) -> np.ndarray:
        """Piece indices in a split ("train", "validation", "test" or None for all) and style."""
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
            mask &= self._a["split"] == SPLITS.index(split)
        if style is not None:
            if style not in self._all_styles:
                return np.zeros(0, dtype=np.int64)
            mask &= self._a["style"] == self._all_styles.index(style)
        return np.flatnonzero(mask)

    def piece(self, index: int) -> Piece:
        a, tpb = self._a, self.ticks_per_beat
        rows = a["notes"][a["offsets"][index] : a["offsets"][index + 1]]
        num, den = (int(x) for x in a["time_signature"][index])
        return Piece(
            notes=tuple(
                Note(int(o) / tpb, int(d) / tpb, int(p), int(v)) for o, d, p, v in rows.tolist()
            ),
            tempo_bpm=float(a["tempo"][index]),
            time_signature=(num, den),
            program=0,
            name=str(a["name"][index]),
            style=self._all_styles[int(a["style"][index])],
            meta={
                "path": str(a["path"][index]),
                "collection": str(a["collections"][int(a["collection"][index])]),
                "split": SPLITS[int(a["split"][index])],
            },
        )

    def events(self, index: int, codec) -> np.ndarray:
        """Piece `index` as (N, 5) events of an `engine.model.events.EventCodec`, without `Note`s."""
        if codec.config.ticks_per_beat != self.ticks_per_beat:
            return codec.encode(self.piece(index))
        rows = self.notes[self.offsets[index] : self.offsets[index + 1]]
        num, den = (int(x) for x in self._a["time_signature"][index])
        return codec.encode_ticks(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], (num, den))

    def pieces(self, split: str | None = "train", style: str | None = None) -> list[Piece]:
        return [self.piece(int(i)) for i in self.indices(split, style)]


def load_corpus(path: Path | None = None) -> Corpus:
    """The corpus file at `path` (default: the `corpus_path` setting)."""
    if path is None:
        path = get_settings().corpus_path
    path = Path(path)
    if not path.is_file():
        raise NotFound(
            f"No corpus at {path}. Build it with `python -m engine.model.corpus --out {path}`."
        )
    return Corpus(path)
