"""The hobby-project LSTM (Classical-Piano-Composer style), trained on Motif's corpus to compare.

Deliberately faithful to that design, failures included:

- one symbol per onset: a note's MIDI pitch ("60") or a chord's pitches joined by dots
  ("60.64.67"); no durations, no velocities. The vocabulary is the training data's symbols (the
  most frequent `max_vocab - 1`); anything else, such as a chord a user's seed has and the corpus
  never had, becomes `<unk>`;
- all pieces concatenated into one stream cut into 100-symbol windows, each predicting the next
  symbol; the symbol index is fed as one float `index / vocab` (not an embedding), through three
  stacked LSTMs, a dense layer and a softmax;
- argmax decoding; every generated symbol placed 0.5 beats after the previous with a 0.5-beat
  duration; and generation that re-runs the whole window through the network for every new note.

`python -m bench.baseline train --out bench/data/baseline.pt --minutes 10` trains it.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.music.notes import Note, Piece

log = logging.getLogger(__name__)

FORMAT = "motif-hobby-baseline"
UNK = "<unk>"
STEP_BEATS = 0.5  # the hobby projects' fixed offset and note length
VELOCITY = 80  # one velocity for every note
N_PRIMERS = 32  # training windows kept in the checkpoint to start from when there is no seed


@dataclass(frozen=True)
class BaselineConfig:
    width: int = 256  # LSTM hidden size; the dense layer is half of it
    layers: int = 3
    window: int = 100
    dropout: float = 0.3
    max_vocab: int = 4096  # symbols past this (by frequency) become <unk>; keeps the file small
    embed: bool = False  # False = the hobby projects' single float input


class BaselineLSTM(nn.Module):
    """Stacked LSTM over a window of symbols -> logits for the symbol after it."""

    def __init__(self, cfg: BaselineConfig, n_vocab: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_vocab = n_vocab
        self.embedding = nn.Embedding(n_vocab, cfg.width) if cfg.embed else None
        self.lstm = nn.LSTM(
            cfg.width if cfg.embed else 1,
            cfg.width,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.dense = nn.Linear(cfg.width, max(1, cfg.width // 2))
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(max(1, cfg.width // 2), n_vocab)

    def forward_all(self, window: torch.Tensor) -> torch.Tensor:
        """window (B, T) symbol indices -> (B, T, V) logits for the symbol after each position."""
        if self.embedding is not None:
            x = self.embedding(window)  # (B, T, H)
        else:
            x = (window.float() / self.n_vocab).unsqueeze(-1)  # (B, T, 1)
        h, _ = self.lstm(x)  # (B, T, H)
        return self.out(self.drop(F.relu(self.dense(h))))  # (B, T, V)

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        """window (B, T) symbol indices -> (B, V) logits for the symbol after the window."""
        return self.forward_all(window)[:, -1]  # (B, V)


@dataclass
class BaselineModel:
    """The network with its vocabulary and config: everything needed to continue a seed."""

    config: BaselineConfig
    vocab: list[str]  # index -> symbol; 0 is <unk>
    net: BaselineLSTM
    primers: list[list[int]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s: i for i, s in enumerate(self.vocab)}

    def encode(self, symbols: Sequence[str]) -> list[int]:
        return [self.index.get(s, 0) for s in symbols]


# --- symbols ------------------------------------------------------------------------------------


def onset_symbols(piece: Piece) -> list[tuple[str, int]]:
    """One (symbol, number of notes) per distinct onset: "60" for a note, "60.64.67" for a chord."""
    groups: dict[float, set[int]] = {}
    for n in piece.notes:
        groups.setdefault(round(n.start, 6), set()).add(int(n.pitch))
    return [(".".join(str(p) for p in sorted(ps)), len(ps)) for _, ps in sorted(groups.items())]


def symbol_pitches(symbol: str) -> list[int]:
    """The MIDI pitches a symbol stands for (none for <unk>)."""
    if symbol == UNK:
        return []
    return [int(p) for p in symbol.split(".")]


def build_vocab(pieces: Sequence[Piece], max_vocab: int) -> list[str]:
    """<unk> then the training symbols, most frequent first (ties by name, so it is repeatable)."""
    counts = Counter(s for p in pieces for s, _ in onset_symbols(p))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [UNK] + [s for s, _ in ranked[: max(0, max_vocab - 1)]]


def _stream(model: BaselineModel, pieces: Sequence[Piece]) -> tuple[np.ndarray, np.ndarray]:
    """All pieces' symbol indices in one stream, as the hobby projects do, with note counts."""
    symbols = [sn for p in pieces for sn in onset_symbols(p)]
    idx = np.asarray(model.encode([s for s, _ in symbols]), dtype=np.int64)
    notes = np.asarray([k for _, k in symbols], dtype=np.int64)
    return idx, notes


# --- training -----------------------------------------------------------------------------------


def train_baseline(
    pieces: Sequence[Piece],
    *,
    width: int = 256,
    steps: int | None = None,
    minutes: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    window: int = 100,
    layers: int = 3,
    max_vocab: int = 4096,
    embed: bool = False,
    all_positions: bool = True,
    log_every: int = 100,
) -> BaselineModel:
    """Train on random windows of the concatenated training stream until `steps` optimizer steps
    or `minutes` of wall time, whichever comes first (at least one must be given). RMSprop and
    categorical cross-entropy, as in the Keras original.

    The original scores only the symbol after each window; `all_positions` (the default) scores
    the next symbol at every position of the window, the same network and the same decoding, but
    a hundred times the training signal per CPU second, so the baseline is not weak merely for
    lack of training on a small budget. `all_positions=False` is the original's loss."""
    if steps is None and minutes is None:
        raise ValueError("give steps or minutes")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = BaselineConfig(
        width=width, layers=layers, window=window, max_vocab=max_vocab, embed=embed
    )
    vocab = build_vocab(pieces, cfg.max_vocab)
    model = BaselineModel(cfg, vocab, BaselineLSTM(cfg, len(vocab)))
    stream, _ = _stream(model, pieces)
    if stream.size < window + 1:
        raise ValueError(f"{stream.size} training symbols: need more than the window of {window}")
    n_windows = stream.size - window
    model.primers = [stream[s : s + window].tolist() for s in rng.integers(0, n_windows, N_PRIMERS)]

    net = model.net.train()
    opt = torch.optim.RMSprop(net.parameters(), lr=lr)
    offsets = np.arange(window)
    t0 = time.perf_counter()
    deadline = t0 + minutes * 60 if minutes is not None else math.inf
    step, ema = 0, math.nan
    while (steps is None or step < steps) and time.perf_counter() < deadline:
        starts = rng.integers(0, n_windows, batch_size)
        x = torch.from_numpy(stream[starts[:, None] + offsets])  # (B, T)
        if all_positions:
            y = torch.from_numpy(stream[starts[:, None] + offsets + 1])  # (B, T)
            loss = F.cross_entropy(net.forward_all(x).flatten(0, 1), y.flatten())
        else:
            y = torch.from_numpy(stream[starts + window])  # (B,)
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if math.isnan(ema) else 0.98 * ema + 0.02 * loss.item()
        if log_every and step % log_every == 0:
            log.info("baseline step %d  loss %.3f  %.0f s", step, ema, time.perf_counter() - t0)
    net.eval()
    model.meta = {
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "train_loss_ema": ema,
        "train_symbols": int(stream.size),
        "train_unk_rate": float((stream == 0).mean()),
        "vocab_size": len(vocab),
        "batch_size": batch_size,
        "lr": lr,
        "all_positions": all_positions,
        "seed": seed,
        "params": sum(p.numel() for p in net.parameters()),
    }
    return model


def save_baseline(model: BaselineModel, path: str | Path) -> Path:
    """One self-describing file: config, vocabulary, primers, metrics and weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "version": 1,
        "config": asdict(model.config),
        "vocab": list(model.vocab),
        "primers": model.primers,
        "meta": model.meta,
        "state_dict": model.net.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_baseline(path: str | Path) -> BaselineModel:
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a hobby-baseline checkpoint")
    cfg = BaselineConfig(**blob["config"])
    net = BaselineLSTM(cfg, len(blob["vocab"]))
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return BaselineModel(cfg, list(blob["vocab"]), net, blob["primers"], dict(blob["meta"]))


# --- generation ---------------------------------------------------------------------------------


@torch.no_grad()
def baseline_continue(
    model: BaselineModel, seed: Piece | None, n_notes: int, *, rng_seed: int = 0
) -> Piece:
    """The continuation of `seed` (seed notes not included) with exactly `n_notes` notes, made
    the way the hobby projects generate: argmax of the next symbol given the last `window`
    symbols, the whole window re-run for every step, one symbol every 0.5 beats from the first
    half beat at or after the seed's end.

    The seed's symbols (unknown ones as <unk>) form the first window, shorter than `window` when
    the seed is short. Without a seed (or an empty one) a training window picked by `rng_seed`
    starts it, as the originals do for every request. <unk> is never generated.
    """
    window = model.config.window
    context = model.encode([s for s, _ in onset_symbols(seed)]) if seed is not None else []
    if not context:
        if not model.primers:
            raise ValueError("the baseline has no primers and no seed was given")
        rng = np.random.default_rng(rng_seed)
        context = list(model.primers[int(rng.integers(len(model.primers)))])
    context = context[-window:]

    start = math.ceil(seed.end_beat / STEP_BEATS - 1e-9) * STEP_BEATS if seed else 0.0
    notes: list[Note] = []
    offset = start
    net = model.net.eval()
    while len(notes) < n_notes:
        logits = net(torch.tensor([context], dtype=torch.long))[0]  # (V,)
        logits[0] = -math.inf  # the originals' closed vocabulary has no <unk> to emit
        idx = int(logits.argmax())
        for pitch in symbol_pitches(model.vocab[idx])[: n_notes - len(notes)]:
            notes.append(Note(offset, STEP_BEATS, pitch, VELOCITY))
        offset += STEP_BEATS
        context = (context + [idx])[-window:]
    return Piece(
        notes=tuple(sorted(notes, key=lambda n: (n.start, n.pitch))),
        tempo_bpm=seed.tempo_bpm if seed else 120.0,
        time_signature=seed.time_signature if seed else (4, 4),
        program=seed.program if seed else 0,
        name="hobby-baseline continuation",
    )


# --- likelihood ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineNll:
    """Negative log-likelihood (nats) of held-out music under the baseline.

    `per_symbol` is the mean over predicted onset symbols; `per_note` spreads the same total over
    the notes those symbols hold (a chord is one symbol). Neither is directly comparable with
    Motif's per-note NLL: Motif also predicts each note's timing, length and loudness (more to
    predict, so a higher number for the same pitch skill), and the baseline's closed vocabulary
    scores every unseen chord as the cheap catch-all <unk> (`unk_rate` says how often).
    """

    per_symbol: float
    per_note: float
    n_symbols: int
    n_notes: int
    unk_rate: float


@torch.no_grad()
def baseline_nll(
    model: BaselineModel,
    pieces: Sequence[Piece],
    *,
    batch_size: int = 256,
    max_windows: int | None = 20_000,
) -> BaselineNll:
    """NLL per predicted symbol and per note over the concatenated stream of `pieces`, for every
    position with a full window before it (evenly thinned to `max_windows` to bound the time)."""
    stream, note_counts = _stream(model, pieces)
    window = model.config.window
    targets = np.arange(window, stream.size)
    if targets.size == 0:
        return BaselineNll(math.nan, math.nan, 0, 0, math.nan)
    if max_windows is not None and targets.size > max_windows:
        targets = targets[np.linspace(0, targets.size - 1, max_windows).astype(np.int64)]
    net = model.net.eval()
    offsets = np.arange(-window, 0)
    total = 0.0
    for i in range(0, targets.size, batch_size):
        t = targets[i : i + batch_size]
        x = torch.from_numpy(stream[t[:, None] + offsets])  # (B, T)
        y = torch.from_numpy(stream[t])  # (B,)
        total += float(F.cross_entropy(net(x), y, reduction="sum"))
    n_notes = int(note_counts[targets].sum())
    return BaselineNll(
        per_symbol=total / targets.size,
        per_note=total / max(1, n_notes),
        n_symbols=int(targets.size),
        n_notes=n_notes,
        unk_rate=float((stream[targets] == 0).mean()),
    )


def unigram_nll(
    train_pieces: Sequence[Piece], test_pieces: Sequence[Piece], codec: Any = None
) -> dict[str, float]:
    """NLL (nats) of the test notes under unigram models fitted on the training notes.

    `pitch`: per note, one distribution over the pitches of Motif's codec, ignoring everything
    else. `event`: Motif's four predicted fields (shift, pitch, duration, velocity) as independent
    unigrams, summed, per note event where, as in `engine.model.train.step.evaluate_nll`, each piece's end
    (an EOS shift) is one more event: the floor any model that uses context must beat on Motif's
    per-note NLL. Also each field alone, per note. Add-one smoothing over each field's classes;
    pieces of fewer than two notes are skipped, as Motif's evaluation skips them.
    """
    from engine.model.events import DURATION, PITCH, SHIFT, VELOCITY, EventCodec

    codec = codec or EventCodec()
    columns = {"shift": SHIFT, "pitch": PITCH, "duration": DURATION, "velocity": VELOCITY}
    sizes = {
        "shift": codec.n_shift,
        "pitch": codec.n_pitch,
        "duration": codec.n_duration,
        "velocity": codec.n_velocity,
    }

    def events(pieces: Sequence[Piece]) -> tuple[np.ndarray, int]:
        arrays = [a for a in (codec.encode(p) for p in pieces) if len(a) >= 2]
        if not arrays:
            return np.zeros((0, 5), dtype=np.int64), 0
        return np.concatenate(arrays), len(arrays)

    (train, train_ends), (test, test_ends) = events(train_pieces), events(test_pieces)
    if len(test) == 0:
        return {"pitch": math.nan, "event": math.nan}
    per_field, total = {}, 0.0
    for name, col in columns.items():
        counts = np.bincount(train[:, col], minlength=sizes[name]).astype(float)
        if name == "shift":
            counts[codec.eos] += train_ends
        counts += 1.0
        logp = np.log(counts / counts.sum())
        nll = -logp[test[:, col]]
        per_field[name] = float(nll.mean())
        total += float(nll.sum())
        if name == "shift":
            total += -float(logp[codec.eos]) * test_ends
    return {"pitch": per_field["pitch"], "event": total / (len(test) + test_ends), **per_field}


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train the hobby baseline on the corpus")
    train.add_argument("--out", type=Path, default=Path("bench/data/baseline.pt"))
    train.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    train.add_argument("--minutes", type=float, default=10.0)
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--width", type=int, default=256)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--max-vocab", type=int, default=4096)
    train.add_argument("--embed", action="store_true", help="embedding input (not the original)")
    train.add_argument(
        "--last-only", action="store_true", help="score only the symbol after each window"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from engine.model.corpus.load import load_corpus
    from engine.settings import DEFAULT_CORPUS_PATH

    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus or DEFAULT_CORPUS_PATH)
    model = train_baseline(
        corpus.pieces("train"),
        width=args.width,
        steps=args.steps,
        minutes=args.minutes,
        seed=args.seed,
        batch_size=args.batch_size,
        max_vocab=args.max_vocab,
        embed=args.embed,
        all_positions=not args.last_only,
    )
    nll = baseline_nll(model, corpus.pieces("validation"), max_windows=5000)
    model.meta["validation_nll_per_symbol"] = nll.per_symbol
    model.meta["validation_nll_per_note"] = nll.per_note
    model.meta["validation_unk_rate"] = nll.unk_rate
    model.meta["corpus_hash"] = getattr(corpus, "content_hash", None)
    path = save_baseline(model, args.out)
    log.info(
        "saved %s (%.1f MB): %d steps in %.0f s, validation NLL %.3f per symbol, unk %.1f%%",
        path,
        path.stat().st_size / 1e6,
        model.meta["steps"],
        model.meta["seconds"],
        nll.per_symbol,
        100 * nll.unk_rate,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
