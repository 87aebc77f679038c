"""Training data: pieces encoded as events, random (seed window -> continuation window) pairs cut
from them (augmented: transposed, style dropped, seed reuse), fixed evaluation windows, and the
corpus's splits or injected pieces."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import BadParams
from engine.model.corpus.load import load_corpus
from engine.model.events import PHRASE_BARS, PITCH, POSITION, SHIFT, EventCodec, phrase_bars
from engine.model.generate.plan import seed_key
from engine.model.lags import LAG_BARS, LAG_FIELDS, window_lags
from engine.model.network import IGNORE
from engine.model.train.config import TrainConfig
from engine.music.notes import Piece


@dataclass
class Encoded:
    """Pieces as event arrays, ready to cut windows from."""

    events: list[np.ndarray]  # (N_i, 6) each: the five columns and PHRASE
    styles: np.ndarray  # (P,) style index per piece
    weights: np.ndarray  # (P,) sampling probability per piece
    reuse_gaps: list[np.ndarray] | None = None  # (N_i,) each, `reuse_gaps`; built on first use

    @property
    def notes(self) -> int:
        return int(sum(len(e) for e in self.events))


def with_phrase(
    codec: EventCodec, events: np.ndarray, time_signature: tuple[int, int]
) -> np.ndarray:
    """Events (N, 5) of a whole piece with the PHRASE column appended: (N, 6)."""
    ticks = np.cumsum(events[:, SHIFT])  # the piece's onsets (it was encoded from tick 0)
    first = int(ticks[0]) if len(ticks) else 0
    phrase = phrase_bars(ticks, codec.bar_ticks(time_signature), first, PHRASE_BARS)
    return np.concatenate([events, phrase[:, None]], axis=1)


def encode_pieces(
    codec: EventCodec, pieces: list[Piece], weights: list[float] | None = None
) -> Encoded:
    """Encode pieces with at least two notes, each with its PHRASE column (N, 6); unknown styles
    become "none"."""
    events, styles, w = [], [], []
    for i, piece in enumerate(pieces):
        ev = codec.encode(piece)
        if len(ev) < 2:
            continue
        events.append(with_phrase(codec, ev, piece.time_signature))
        styles.append(
            codec.config.styles.index(piece.style) if piece.style in codec.config.styles else 0
        )
        w.append(len(ev) if weights is None else float(weights[i]))
    weights_arr = np.asarray(w, dtype=np.float64)
    if len(weights_arr):
        weights_arr = weights_arr / weights_arr.sum()
    return Encoded(events=events, styles=np.asarray(styles, dtype=np.int64), weights=weights_arr)


REUSE_GRAM = 4  # notes in a figure (3 intervals and the rhythm of its last 3 notes)


def reuse_gaps(events: np.ndarray) -> np.ndarray:
    """(N,) for each note, how many notes back the same 4-note figure (pitch intervals and
    onset shifts, so transposed returns count) last ended, when it ended at least REUSE_GRAM notes
    earlier (no overlap); 0 where the figure is new."""
    n = len(events)
    gaps = np.zeros(n, dtype=np.int64)
    if n < REUSE_GRAM:
        return gaps
    pitch, shift = events[:, PITCH], events[:, SHIFT]
    last: dict[tuple[int, ...], int] = {}
    pending: list[tuple[tuple[int, ...], int]] = []  # figures that may not be matched yet
    for i in range(REUSE_GRAM - 1, n):
        lo = i - REUSE_GRAM + 1
        gram = (
            *np.diff(pitch[lo : i + 1]).tolist(),
            *shift[lo + 1 : i + 1].tolist(),
        )
        j = last.get(gram)
        if j is not None:
            gaps[i] = i - j
        pending.append((gram, i))
        if len(pending) >= REUSE_GRAM:  # a figure ending REUSE_GRAM notes ago no longer overlaps
            g, k = pending.pop(0)
            last[g] = k
    return gaps


def _reuse_cut(
    rng: np.random.Generator, gaps: np.ndarray, seed_len: int, target_len: int
) -> int | None:
    """A cut whose continuation, within its first notes, returns to a figure that lies wholly
    in the seed before it; None when the piece has none."""
    into = int(rng.integers(REUSE_GRAM - 1, max(REUSE_GRAM, target_len // 2)))  # notes after cut
    ok = (gaps > into) & (gaps <= into + seed_len - REUSE_GRAM + 1)
    ok[: into + 1] = False
    found = np.flatnonzero(ok)
    if not len(found):
        return None
    return int(found[rng.integers(len(found))]) - into


def data_hash(data: Encoded) -> str:
    h = hashlib.sha256()
    for ev, style in zip(data.events, data.styles, strict=True):
        h.update(ev.tobytes())
        h.update(int(style).to_bytes(2, "little"))
    return h.hexdigest()[:16]


def cut_window(
    events: np.ndarray, cut: int, seed_len: int, target_len: int, eos: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `seed_len` notes before `cut` and up to `target_len` from it; EOS after the last
    note if it fits (its other fields IGNORE)."""
    seed = events[max(0, cut - seed_len) : cut]
    target = events[cut : cut + target_len]
    if len(target) < target_len:
        end = np.full((1, events.shape[1]), IGNORE, dtype=np.int64)
        end[0, SHIFT] = eos
        end[0, POSITION:] = 0
        target = np.concatenate([target, end])
    return seed, target


def transpose_window(
    rng: np.random.Generator, seed: np.ndarray, target: np.ndarray, n_pitch: int, max_shift: int
) -> tuple[np.ndarray, np.ndarray]:
    """Both windows moved by one random interval that keeps every pitch in range."""
    pitches = np.concatenate([seed[:, PITCH], target[:, PITCH]])
    pitches = pitches[pitches >= 0]
    if not len(pitches) or max_shift <= 0:
        return seed, target
    low = max(-max_shift, -int(pitches.min()))
    high = min(max_shift, n_pitch - 1 - int(pitches.max()))
    step = int(rng.integers(low, high + 1)) if high >= low else 0
    if step == 0:
        return seed, target
    seed, target = seed.copy(), target.copy()
    seed[:, PITCH] += step
    real = target[:, PITCH] >= 0
    target[real, PITCH] += step
    return seed, target


def collate(
    windows: list[tuple[np.ndarray, np.ndarray, int]], target_len: int, codec: EventCodec
) -> dict[str, torch.Tensor]:
    """Right-padded batch: seed (B, S, C) + seed_len (B,), target (B, T, C) IGNORE-padded
    (C: 5, or 6 with PHRASE), style (B,), the seeds' key classes (B,) and each step's lag inputs
    (B, T, columns; engine.model.lags)."""
    B = len(windows)
    S = max(1, max(len(s) for s, _, _ in windows))
    C = windows[0][1].shape[1] if windows[0][1].ndim == 2 else 5
    seed = np.zeros((B, S, C), dtype=np.int64)
    target = np.full((B, target_len, C), IGNORE, dtype=np.int64)
    lags = torch.zeros(B, target_len, len(LAG_BARS) * LAG_FIELDS, dtype=torch.int64)
    cfg = codec.config
    for i, (s, t, _) in enumerate(windows):
        seed[i, : len(s)] = s
        target[i, : len(t)] = t
        lags[i, : len(t)] = window_lags(
            torch.from_numpy(s), torch.from_numpy(t), cfg.max_shift, cfg.max_position
        )
    return {
        "seed": torch.from_numpy(seed),
        "seed_len": torch.tensor([len(s) for s, _, _ in windows]),
        "style": torch.tensor([st for _, _, st in windows]),
        "target": torch.from_numpy(target),
        "key": torch.tensor([seed_key(s, codec) for s, _, _ in windows]),
        "lags": lags,
    }


def sample_batch(
    rng: np.random.Generator, data: Encoded, codec: EventCodec, cfg: TrainConfig
) -> dict[str, torch.Tensor]:
    """Random training pairs: note-weighted pieces, random cuts, random transpositions, the
    pieces' styles (sometimes dropped). The seed length (none, short 1-8, long) is drawn once per
    batch so rows pad to about the same length: the encoder does not run over idle padding."""
    r = rng.random()
    if r < cfg.no_seed_prob:
        seed_len = 0
    elif r < cfg.no_seed_prob + cfg.short_seed_prob:
        seed_len = int(rng.integers(1, 9))
    else:
        seed_len = int(rng.integers(min(9, cfg.seed_max), cfg.seed_max + 1))
    reuse = seed_len >= REUSE_GRAM and cfg.reuse_prob > 0 and rng.random() < cfg.reuse_prob
    if reuse and data.reuse_gaps is None:
        data.reuse_gaps = [reuse_gaps(ev) for ev in data.events]
    gaps = data.reuse_gaps if reuse else None
    windows = []
    for p in rng.choice(len(data.events), size=cfg.batch_size, p=data.weights):
        ev = data.events[p]
        cut = _reuse_cut(rng, gaps[p], seed_len, cfg.target_len) if gaps is not None else None
        if cut is not None:
            pass  # a continuation that develops its seed
        elif seed_len == 0 and rng.random() < 0.5:
            cut = 0  # the very start of a piece
        else:
            cut = int(rng.integers(0 if seed_len == 0 else 1, len(ev)))
        seed, target = cut_window(ev, cut, seed_len, cfg.target_len, codec.eos)
        seed, target = transpose_window(rng, seed, target, codec.n_pitch, cfg.transpose)
        style = int(data.styles[p]) if rng.random() >= cfg.style_dropout else 0
        windows.append((seed, target, style))
    batch = collate(windows, cfg.target_len, codec)
    if seed_len and cfg.key_dropout > 0:
        batch["key"][torch.from_numpy(rng.random(len(windows)) < cfg.key_dropout)] = 0
    return batch


def eval_batches(
    data: Encoded,
    codec: EventCodec,
    batch_size: int,
    seed_len: int,
    target_len: int,
    max_windows: int | None,
):
    """Fixed windows covering every note once: cuts at 0, T, 2T, ... with the notes before as
    seed; the same for every model, so their NLLs compare. Over `max_windows`, whole pieces in a
    fixed random order until the cap (a subset of windows would favour piece openings)."""
    per_piece = []
    for ev, style in zip(data.events, data.styles, strict=True):
        windows = []
        for cut in range(0, len(ev) + 1, target_len):
            seed, target = cut_window(ev, cut, seed_len, target_len, codec.eos)
            windows.append((seed, target, int(style)))
        per_piece.append(windows)
    order: range | np.ndarray = range(len(per_piece))
    if max_windows is not None and sum(len(w) for w in per_piece) > max_windows:
        order = np.random.default_rng(0).permutation(len(per_piece))
    chosen: list = []
    for i in order:
        if max_windows is not None and chosen and len(chosen) + len(per_piece[i]) > max_windows:
            break
        chosen.extend(per_piece[i])
    for i in range(0, len(chosen), batch_size):
        yield collate(chosen[i : i + batch_size], target_len, codec)


def load_data(cfg: TrainConfig, codec: EventCodec) -> tuple[Encoded, Encoded, Encoded, str | None]:
    corpus = None
    need_corpus = cfg.pieces is None or cfg.val_pieces is None or cfg.test_pieces is None
    if need_corpus and cfg.corpus_path is not None and Path(cfg.corpus_path).exists():
        corpus = load_corpus(cfg.corpus_path)
    if cfg.pieces is not None:
        train_pieces = cfg.pieces
    elif corpus is not None:
        train_pieces = corpus.pieces("train")
    else:
        raise BadParams(f"no training data: the corpus {cfg.corpus_path} is missing")
    weights = cfg.piece_weights
    if cfg.val_pieces is not None:
        val_pieces = cfg.val_pieces
    elif corpus is not None:
        val_pieces = corpus.pieces("validation")
    else:  # hold out every 20th piece
        val_pieces = train_pieces[::20]
        keep = [i for i in range(len(train_pieces)) if i % 20]
        train_pieces = [train_pieces[i] for i in keep] if keep else train_pieces
        weights = [weights[i] for i in keep] if weights is not None and keep else weights
    if cfg.test_pieces is not None:
        test_pieces = cfg.test_pieces
    else:
        test_pieces = corpus.pieces("test") if corpus is not None else []
    corpus_hash = corpus.content_hash if corpus is not None else None
    train = encode_pieces(codec, train_pieces, weights)
    if not train.events:
        raise BadParams("no training data: no piece has two or more notes")
    return train, encode_pieces(codec, val_pieces), encode_pieces(codec, test_pieces), corpus_hash
