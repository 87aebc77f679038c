from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from engine.errors import NotFound
from engine.model.corpus.build import build_corpus, split_of
from engine.model.corpus.load import load_corpus
from engine.model.corpus.parse import (
    COLLECTIONS,
    WorkItem,
    normalize_note_values,
    select,
    work_items,
)
from engine.model.events import SHIFT, EventCodec
from engine.settings import DEFAULT_CORPUS_PATH


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "corpus.npz"
    stats = build_corpus(out, max_per_collection=3, workers=2, progress=False)
    return out, stats


def test_a_small_build_parses_three_pieces_per_collection(small):
    out, stats = small
    assert stats.pieces == dict.fromkeys(COLLECTIONS, 3)
    assert sum(stats.failures.values()) == 0
    assert stats.total_pieces == 15
    assert stats.file_bytes == out.stat().st_size
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["content_hash"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert meta["total_notes"] == stats.total_notes > 0


def test_loaded_pieces_are_well_formed(small):
    out, stats = small
    corpus = load_corpus(out)
    assert len(corpus) == 15
    assert corpus.styles == ("folk", "celtic", "chorale", "renaissance")
    assert corpus.content_hash == hashlib.sha256(out.read_bytes()).hexdigest()
    assert corpus.stats.total_notes == stats.total_notes == len(corpus.notes)
    everything = corpus.pieces(split=None)
    assert sum(len(corpus.pieces(s)) for s in ("train", "validation", "test")) == 15
    for piece in everything:
        assert piece.notes and piece.style in corpus.styles and piece.name
        assert 30 <= piece.tempo_bpm <= 300
        num, den = piece.time_signature
        assert num >= 1 and den in (1, 2, 4, 8, 16, 32)
        keys = [(n.start, n.pitch) for n in piece.notes]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        assert all((n.start * 12).is_integer() and n.duration > 0 for n in piece.notes)
        assert all(0 <= n.pitch <= 127 and 1 <= n.velocity <= 127 for n in piece.notes)
        assert piece.notes[0].start < piece.beats_per_bar  # no leading empty bars
        assert piece.meta["split"] == split_of(piece.meta["path"])
    chorales = corpus.pieces(split=None, style="chorale")
    assert len(chorales) == 3
    codec = EventCodec()
    events = codec.encode(chorales[0])
    index = int(corpus.indices(split=None, style="chorale")[0])
    assert np.array_equal(corpus.events(index, codec), events)
    assert (events[:, SHIFT] == 0).sum() > len(events) / 2  # four voices: mostly chords
    assert corpus.pieces(split=None, style="none") == []
    with pytest.raises(ValueError, match="unknown split"):
        corpus.pieces("dev")


def test_splits_are_deterministic_and_roughly_90_5_5():
    keys = [f"essenFolksong/x.abc#{i}" for i in range(4000)]
    splits = [split_of(k) for k in keys]
    assert splits == [split_of(k) for k in keys]
    share = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert 0.87 < share["train"] < 0.93 and 0.03 < share["validation"] < 0.07
    assert 0.03 < share["test"] < 0.07


def test_selection_is_a_stable_spread_sample():
    items = [WorkItem("essenFolksong", f"essenFolksong/f{i // 50}.abc", i) for i in range(500)]
    picked = select(items, 20)
    assert picked == select(list(reversed(items)), 20)
    assert len({it.path for it in picked}) > 5  # not just the first file
    assert select(items, None) == items


def test_work_items_find_the_music21_collections():
    assert len(work_items("bach")) == 371  # the chorales only
    ryan = work_items("ryansMammoth")
    assert len(ryan) > 1000 and all(it.number is None for it in ryan[:20])
    with pytest.raises(ValueError):
        work_items("no-such-collection")


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match="python -m engine.model.corpus"):
        load_corpus(tmp_path / "nothing.npz")


def test_the_shipped_corpus():
    corpus = load_corpus(DEFAULT_CORPUS_PATH)
    assert DEFAULT_CORPUS_PATH.stat().st_size < 8 * 1024 * 1024
    assert len(corpus) >= 2000
    assert set(corpus.styles) == {"folk", "celtic", "chorale", "renaissance"}
    for split in ("train", "validation", "test"):
        assert len(corpus.indices(split)) > 50
    offsets = corpus.offsets
    assert offsets[0] == 0 and offsets[-1] == len(corpus.notes) and np.all(np.diff(offsets) > 0)


def test_long_note_values_are_halved():
    # A 4/2 piece moving in half notes (24 ticks), two notes colliding after halving.
    rows = np.array([[0, 24, 60, 80], [24, 24, 62, 80], [48, 48, 64, 80], [49, 1, 64, 80]])
    out, ts, bpm, halvings = normalize_note_values(rows, (4, 2), 100.0, tempo_marked=True)
    assert (ts, bpm, halvings) == ((4, 4), 200.0, 1)
    assert out.tolist() == [[0, 12, 60, 80], [12, 12, 62, 80], [24, 24, 64, 80]]
    whole = np.array([[0, 48, 60, 80], [48, 48, 62, 80], [96, 48, 64, 80]])
    out, ts, bpm, halvings = normalize_note_values(whole, (4, 1), 100.0, tempo_marked=False)
    assert (ts, bpm, halvings) == ((4, 4), 100.0, 2) and out[:, 1].tolist() == [12, 12, 12]
    reel = np.array([[0, 6, 60, 80], [6, 6, 62, 80], [12, 6, 64, 80]])
    assert normalize_note_values(reel, (2, 2), 160.0, tempo_marked=False)[1:] == ((2, 2), 160.0, 0)
