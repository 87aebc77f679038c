"""Train the seq2seq model: random (seed window -> continuation window) pairs cut from pieces.

Readable top to bottom: data (encode, cut, augment, collate), loss, one step, evaluation, the loop,
the CLI. `train(TrainConfig)` is what `motif train` and the retraining job call; `train_step` is the
step it takes (bench/train_bench.py times that very function); `evaluate_nll` is what the promotion
gate compares models with.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import BadParams, MotifError
from engine.model.checkpoint import LoadedModel, load_checkpoint, pick_device, save_checkpoint
from engine.model.events import EventCodec, TokenizerConfig
from engine.model.network import IGNORE, PITCH, POSITION, SHIFT, ModelConfig, MotifSeq2Seq
from engine.model.plan import N_KEY, seed_key
from engine.music.notes import Piece
from engine.settings import DEFAULT_CORPUS_PATH

log = logging.getLogger(__name__)

FIELD_NAMES = ("shift", "pitch", "duration", "velocity")
EVAL_SEED_LEN = 64  # evaluation windows: fixed, so NLLs of different models compare
EVAL_TARGET_LEN = 64


@dataclass
class TrainConfig:
    out: Path = Path("var/models/motif.pt")  # the best checkpoint; `<stem>.resume.pt` beside it
    # data: the corpus's splits, or injected pieces (corpus + collected tunes for retraining)
    corpus_path: Path | None = DEFAULT_CORPUS_PATH
    pieces: list[Piece] | None = None  # None: the corpus's "train" split
    piece_weights: list[float] | None = None  # sampling weight per piece; None: by note count
    val_pieces: list[Piece] | None = None  # None: the corpus's "validation" split (or 5% held out)
    test_pieces: list[Piece] | None = None  # None: the corpus's "test" split, if there is one
    init_from: Path | None = None  # fine-tune these weights (their configs win over the ones below)
    resume_from: Path | None = None  # a `.resume.pt` file: continue that run exactly
    # model (a fresh model only)
    d_embed: int = 256
    hidden: int = 384
    layers: int = 2
    dropout: float = 0.1
    attention: bool = True
    key_conditioning: bool = True  # condition on the seed's estimated key
    # windows and augmentation
    seed_max: int = 64
    target_len: int = 64
    no_seed_prob: float = 0.1
    short_seed_prob: float = 0.3  # 1-8 note seeds
    transpose: int = 6  # +- semitones, kept in the pitch range
    style_dropout: float = 0.2  # share of examples trained as style "none"
    # share of seeded examples trained with key class 0 ("unknown"): the seed's notes, not the
    # label, must then carry the key (the label alone carried most of the seed's information)
    key_dropout: float = 0.0
    # share of seeded batches cut where the continuation reuses a 4-note figure of its seed
    # (engine.seed_reuse): pairs that reward developing the seed's material
    reuse_prob: float = 0.0
    # optimisation
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_frac: float = 0.05
    warmup_steps: int = 100
    schedule: str = "cosine"  # or "constant"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # budget: whichever ends first
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: train notes / (batch_size * target_len)
    max_steps: int | None = None
    max_minutes: float | None = None
    eval_windows: int = 1024  # cap on validation windows per evaluation
    # runtime
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # CUDA only
    cpu_bf16: bool = False  # bf16 autocast on CPU: 2x+ where the CPU has AMX / AVX-512 BF16
    seed: int = 1234
    half: bool = True  # fp16 weights in the checkpoint
    version: str = ""  # meta["version"]; empty: motif-<UTC timestamp>
    loss_png: Path | None = None  # None: `<stem>-loss.png` beside `out`
    progress: bool = True  # tqdm bar
    log_every: int = 20
    on_progress: Callable[[dict[str, Any]], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked every step (cancel a retrain)


@dataclass
class TrainResult:
    checkpoint: Path
    resume_path: Path
    loss_png: Path | None
    steps: int
    epochs: float
    best_val_nll: float | None
    val: dict[str, float]
    test: dict[str, float]
    tokens_per_s: float
    wall_s: float
    stopped: str  # "budget" | "time" | "stopped"
    history: list[dict[str, Any]] = field(default_factory=list)


# --- data ---------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Pieces as event arrays, ready to cut windows from."""

    events: list[np.ndarray]  # (N_i, 5) each
    styles: np.ndarray  # (P,) style index per piece
    weights: np.ndarray  # (P,) sampling probability per piece
    reuse_gaps: list[np.ndarray] | None = None  # (N_i,) each, `reuse_gaps`; built on first use

    @property
    def notes(self) -> int:
        return int(sum(len(e) for e in self.events))


def encode_pieces(
    codec: EventCodec, pieces: list[Piece], weights: list[float] | None = None
) -> Encoded:
    """Encode pieces with at least two notes; unknown styles become "none"."""
    events, styles, w = [], [], []
    for i, piece in enumerate(pieces):
        ev = codec.encode(piece)
        if len(ev) < 2:
            continue
        events.append(ev)
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
        end = np.full((1, 5), IGNORE, dtype=np.int64)
        end[0, SHIFT] = eos
        end[0, POSITION] = 0
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
    """Right-padded batch: seed (B, S, 5) + seed_len (B,), target (B, T, 5) IGNORE-padded,
    style (B,) and the seeds' key classes (B,)."""
    B = len(windows)
    S = max(1, max(len(s) for s, _, _ in windows))
    seed = np.zeros((B, S, 5), dtype=np.int64)
    target = np.full((B, target_len, 5), IGNORE, dtype=np.int64)
    for i, (s, t, _) in enumerate(windows):
        seed[i, : len(s)] = s
        target[i, : len(t)] = t
    return {
        "seed": torch.from_numpy(seed),
        "seed_len": torch.tensor([len(s) for s, _, _ in windows]),
        "style": torch.tensor([st for _, _, st in windows]),
        "target": torch.from_numpy(target),
        "key": torch.tensor([seed_key(s, codec) for s, _, _ in windows]),
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
    windows = []
    for p in rng.choice(len(data.events), size=cfg.batch_size, p=data.weights):
        ev = data.events[p]
        cut = _reuse_cut(rng, data.reuse_gaps[p], seed_len, cfg.target_len) if reuse else None
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
    order = range(len(per_piece))
    if max_windows is not None and sum(len(w) for w in per_piece) > max_windows:
        order = np.random.default_rng(0).permutation(len(per_piece))
    chosen: list = []
    for i in order:
        if max_windows is not None and chosen and len(chosen) + len(per_piece[i]) > max_windows:
            break
        chosen.extend(per_piece[i])
    for i in range(0, len(chosen), batch_size):
        yield collate(chosen[i : i + batch_size], target_len, codec)


# --- loss ---------------------------------------------------------------------------------------
def field_nll(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """NLL (nats) of every predicted field: (B, T, 4), 0 where a field is IGNORE."""
    B, T = target.shape[:2]
    out = [
        F.cross_entropy(
            lg.float().reshape(B * T, -1),  # (B*T, n)
            target[..., f].reshape(B * T),  # (B*T,)
            ignore_index=IGNORE,
            reduction="none",
        ).view(B, T)
        for f, lg in enumerate(logits)
    ]
    return torch.stack(out, dim=-1)  # (B, T, 4)


# --- one step -----------------------------------------------------------------------------------
def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW, weight decay on weight matrices only (not embeddings, biases, start vectors).
    Fused on CPU and CUDA: one kernel over all tensors instead of ~10 small ops per tensor, which
    on CPU cost more than the update itself (the result differs only in the last bits)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        fused=device.type in ("cpu", "cuda"),
    )


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 1.0,
) -> torch.Tensor:
    """One optimizer step on a batch already on the model's device (a `collate` dict):
    teacher-forced forward (under autocast when `amp_dtype` is set), NLL per note event,
    backward, gradient clipping, optimizer step. `scaler`: an enabled GradScaler for fp16.

    Returns the loss, detached and still on the device: reading it waits for the step to finish,
    so the loop reads losses only when it logs."""
    target = batch["target"]
    with torch.autocast(target.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(batch["seed"], batch["seed_len"], batch["style"], target, batch["key"])
    loss = field_nll(logits, target).sum() / (target[..., SHIFT] != IGNORE).sum()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return loss.detach()


@torch.no_grad()
def _evaluate(model: MotifSeq2Seq, batches, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)
    counted = torch.zeros(4, dtype=torch.float64)
    notes = 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        target = batch["target"]
        logits = model(batch["seed"], batch["seed_len"], batch["style"], target, batch["key"])
        nll = field_nll([lg.float() for lg in logits], target)  # (half-precision models too)
        total += nll.sum(dim=(0, 1)).double().cpu()
        counted += (target[..., :4] != IGNORE).sum(dim=(0, 1)).double().cpu()
        notes += int((target[..., SHIFT] != IGNORE).sum())
    model.train(was_training)
    if notes == 0:
        return {}
    result = {"nll_per_note": float(total.sum() / notes), "notes": notes}
    for f, name in enumerate(FIELD_NAMES):
        result[f"nll_{name}"] = float(total[f] / max(1.0, float(counted[f])))
    return result


def evaluate_nll(
    lm: LoadedModel,
    pieces: list[Piece],
    *,
    batch_size: int = 64,
    seed_len: int = EVAL_SEED_LEN,
    target_len: int = EVAL_TARGET_LEN,
    max_windows: int | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean NLL per note event (notes and the end of each piece; nats, all four fields summed)
    and per field, on fixed windows of `pieces` with the pieces' own styles. Empty dict if
    there is nothing to score. `dtype` (e.g. torch.bfloat16): score a copy of the model whose
    weights and arithmetic are in that precision (the loss itself in float32)."""
    data = encode_pieces(lm.codec, pieces)
    batches = eval_batches(data, lm.codec, batch_size, seed_len, target_len, max_windows)
    model = lm.model
    if dtype is not None and dtype != next(model.parameters()).dtype:
        model = copy.deepcopy(model).to(dtype)
    return _evaluate(model, batches, lm.device)


# --- the loop -----------------------------------------------------------------------------------
def _load_data(cfg: TrainConfig, codec: EventCodec) -> tuple[Encoded, Encoded, Encoded, str | None]:
    corpus = None
    need_corpus = cfg.pieces is None or cfg.val_pieces is None or cfg.test_pieces is None
    if need_corpus and cfg.corpus_path is not None and Path(cfg.corpus_path).exists():
        from engine.model.corpus import load_corpus

        corpus = load_corpus(cfg.corpus_path)
    if cfg.pieces is None and corpus is None:
        raise BadParams(f"no training data: the corpus {cfg.corpus_path} is missing")
    train_pieces = cfg.pieces if cfg.pieces is not None else corpus.pieces("train")
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
    corpus_hash = None
    if corpus is not None:
        corpus_hash = (
            corpus.content_hash() if callable(corpus.content_hash) else corpus.content_hash
        )
    train = encode_pieces(codec, train_pieces, weights)
    if not train.events:
        raise BadParams("no training data: no piece has two or more notes")
    return train, encode_pieces(codec, val_pieces), encode_pieces(codec, test_pieces), corpus_hash


def _lr(cfg: TrainConfig, progress: float, step: int) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warm
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * cos)


def _plain_config(cfg: TrainConfig) -> dict[str, Any]:
    skip = {"pieces", "piece_weights", "val_pieces", "test_pieces", "on_progress", "should_stop"}
    return {
        f.name: (str(v) if isinstance(v, Path) else v)
        for f in fields(cfg)
        if f.name not in skip
        and isinstance(v := getattr(cfg, f.name), int | float | str | bool | Path | None)
    }


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_nll"]) for h in history if "val_nll" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (NLL / note)", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation NLL / note")
    if train:  # the first steps' huge losses would flatten the interesting part
        ax.set_ylim(top=1.2 * max(v for _, v in train[len(train) // 10 :] + val))
    ax.set_xlabel("step")
    ax.set_ylabel("nats per note")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def resume_path_for(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".resume.pt")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX-512 BF16): there bf16 autocast
    makes LSTM training about twice as fast; elsewhere it emulates bf16 and is slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh
                          if line.startswith("flags")), [])  # fmt: skip
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def train(cfg: TrainConfig) -> TrainResult:
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out)
    resume_path = resume_path_for(out)
    loss_png = cfg.loss_png or out.with_name(out.stem + "-loss.png")

    # model, codec, optimizer: fresh, fine-tuned or resumed
    resume = None
    if cfg.resume_from is not None:
        resume = torch.load(cfg.resume_from, map_location="cpu", weights_only=True)
        tok_cfg = TokenizerConfig.from_dict(resume["tokenizer_config"])
        model_cfg = ModelConfig(**resume["model_config"])
    elif cfg.init_from is not None:
        base = load_checkpoint(cfg.init_from)
        tok_cfg, model_cfg = base.codec.config, base.config
    else:
        tok_cfg = TokenizerConfig()
        model_cfg = None
    codec = EventCodec(tok_cfg)
    if model_cfg is None:
        model_cfg = ModelConfig.for_codec(
            codec,
            d_embed=cfg.d_embed,
            hidden=cfg.hidden,
            layers=cfg.layers,
            dropout=cfg.dropout,
            attention=cfg.attention,
            n_key=N_KEY if cfg.key_conditioning else 0,
        )
    model = MotifSeq2Seq(model_cfg)
    if cfg.init_from is not None and resume is None:
        model.load_state_dict(base.model.state_dict())
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    amp_dtype = None
    if use_cuda and cfg.amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "cpu" and cfg.cpu_bf16:
        amp_dtype = torch.bfloat16
        if not cpu_has_native_bf16():
            log.warning("--cpu-bf16 on a CPU without AMX or AVX-512 BF16: likely slower than fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is torch.float16)

    train_data, val_data, test_data, corpus_hash = _load_data(cfg, codec)
    steps_per_epoch = cfg.steps_per_epoch or max(
        1, train_data.notes // (cfg.batch_size * cfg.target_len)
    )
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None

    step, prior_s, best_val, history = 0, 0.0, math.inf, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        step, prior_s = int(resume["step"]), float(resume["elapsed_s"])
        best_val, history = float(resume["best_val"]), list(resume["history"])
        rng.bit_generator.state = resume["numpy_rng"]
        torch.set_rng_state(resume["torch_rng"])
    log.info(
        "training %s params on %s: %d train pieces (%d notes), %d val, %d test; "
        "%d steps/epoch, up to %d steps",
        f"{model.num_params():,}",
        device,
        len(train_data.events),
        train_data.notes,
        len(val_data.events),
        len(test_data.events),
        steps_per_epoch,
        total_steps,
    )

    meta_base = {
        "version": cfg.version or "motif-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
        "corpus_hash": corpus_hash,
        "data_hash": data_hash(train_data),
        "train_pieces": len(train_data.events),
        "train_notes": train_data.notes,
        "init_from": str(cfg.init_from) if cfg.init_from else None,
        "train_config": _plain_config(cfg),
        "params": model.num_params(),
    }
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def elapsed() -> float:
        return prior_s + time.perf_counter() - started

    def save_resume() -> None:
        torch.save(
            {
                "model_config": asdict(model_cfg),
                "tokenizer_config": tok_cfg.to_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "elapsed_s": elapsed(),
                "best_val": best_val,
                "history": history,
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
            },
            resume_path,
        )

    last_eval = None

    def end_of_epoch(tokens_per_s: float) -> None:
        nonlocal best_val, last_eval
        last_eval = step
        val = _evaluate(
            model,
            eval_batches(val_data, codec, 64, EVAL_SEED_LEN, EVAL_TARGET_LEN, cfg.eval_windows),
            device,
        )
        point = {"step": step, "epoch": step / steps_per_epoch}
        if val:
            point.update(val_nll=val["nll_per_note"], val=val)
        history.append(point)
        val_nll = val.get("nll_per_note", math.inf)
        if val_nll < best_val or not val or not out.exists():
            best_val = min(best_val, val_nll)
            meta = dict(
                meta_base,
                trained_steps=step,
                epochs=round(step / steps_per_epoch, 3),
                metrics={"val": val},
                tokens_per_s=round(tokens_per_s, 1),
                wall_s=round(elapsed(), 1),
                device=str(device),
            )
            save_checkpoint(out, model, model_cfg, tok_cfg, meta, half=cfg.half)
        save_resume()
        _plot(history, loss_png)
        log.info("step %d epoch %.2f: validation %s", step, step / steps_per_epoch, val)
        if cfg.on_progress:
            cfg.on_progress(
                {
                    "epoch": step / steps_per_epoch,
                    "step": step,
                    "total_steps": total_steps,
                    "val_nll": val.get("nll_per_note"),
                    "eta_s": 0.0 if step >= total_steps else None,
                }
            )

    model.train()
    stopped = "budget"
    ema, tokens, train_s, t_run = None, 0, 0.0, time.perf_counter()
    tokens_per_s = 0.0
    step_at_start = step
    unread: list[torch.Tensor] = []  # losses still on the device: reading one waits for its step
    while step < total_steps:
        if budget_s is not None and elapsed() >= budget_s:
            stopped = "time"
            break
        if cfg.should_stop is not None and cfg.should_stop():
            stopped = "stopped"
            break
        t_step = time.perf_counter()
        host_batch = sample_batch(rng, train_data, codec, cfg)
        tokens += int((host_batch["target"][..., SHIFT] != IGNORE).sum())
        batch = {k: v.to(device, non_blocking=True) for k, v in host_batch.items()}
        progress = step / total_steps
        if budget_s is not None:
            progress = max(progress, elapsed() / budget_s)
        lr = _lr(cfg, progress, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        unread.append(
            train_step(
                model, batch, optimizer, scaler, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip
            )
        )
        step += 1
        log_now = step % cfg.log_every == 0 or step == total_steps
        if log_now or step % steps_per_epoch == 0:  # one wait, so train_s covers the work done
            for loss_value in torch.stack(unread).tolist():
                ema = loss_value if ema is None else 0.95 * ema + 0.05 * loss_value
            unread.clear()
        train_s += time.perf_counter() - t_step
        tokens_per_s = tokens / max(1e-9, train_s)
        if log_now:
            history.append({"step": step, "loss": ema, "lr": lr})
            per_step = (time.perf_counter() - t_run) / (step - step_at_start)
            eta = (total_steps - step) * per_step
            if budget_s is not None:
                eta = min(eta, max(0.0, budget_s - elapsed()))
            if bar is not None:
                bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{tokens_per_s:,.0f}", lr=f"{lr:.1e}")
            if cfg.on_progress:
                cfg.on_progress(
                    {
                        "epoch": step / steps_per_epoch,
                        "step": step,
                        "total_steps": total_steps,
                        "loss": ema,
                        "tokens_per_s": tokens_per_s,
                        "eta_s": eta,
                    }
                )
        if bar is not None:
            bar.update(1)
        if step % steps_per_epoch == 0 or step == total_steps:
            end_of_epoch(tokens_per_s)
    if bar is not None:
        bar.close()
    if last_eval != step or not out.exists():
        end_of_epoch(tokens_per_s)

    # test metrics of the best checkpoint, written into its meta
    best = load_checkpoint(out, device=device)
    test = {}
    if test_data.events:
        test = _evaluate(
            best.model,
            eval_batches(test_data, codec, 64, EVAL_SEED_LEN, EVAL_TARGET_LEN, None),
            device,
        )
        meta = dict(best.meta)
        meta["metrics"] = dict(meta.get("metrics") or {}, test=test)
        save_checkpoint(out, best.model, best.config, best.codec.config, meta, half=cfg.half)
    val = dict((best.meta.get("metrics") or {}).get("val") or {})
    log.info(
        "done: %d steps, %.0f s, %.0f tokens/s; best validation %s; test %s",
        step,
        elapsed(),
        tokens_per_s,
        val,
        test,
    )
    return TrainResult(
        checkpoint=out,
        resume_path=resume_path,
        loss_png=loss_png,
        steps=step,
        epochs=step / steps_per_epoch,
        best_val_nll=val.get("nll_per_note"),
        val=val,
        test=test,
        tokens_per_s=tokens_per_s,
        wall_s=elapsed(),
        stopped=stopped,
        history=history,
    )


# --- CLI ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="motif train", description="Train Motif's seq2seq LSTM.")
    p.add_argument(
        "--corpus", type=Path, default=d.corpus_path, help="corpus .npz (default: %(default)s)"
    )
    p.add_argument(
        "--out", type=Path, default=d.out, help="best checkpoint path (default: %(default)s)"
    )
    p.add_argument("--init-from", type=Path, help="fine-tune from this checkpoint")
    p.add_argument("--resume", type=Path, help="continue from a .resume.pt file")
    p.add_argument("--d-embed", type=int, default=d.d_embed)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--no-key", action="store_true", help="no conditioning on the seed's key")
    p.add_argument("--seed-max", type=int, default=d.seed_max, help="longest seed window (notes)")
    p.add_argument(
        "--target-len", type=int, default=d.target_len, help="continuation window (notes)"
    )
    p.add_argument(
        "--key-dropout",
        type=float,
        default=d.key_dropout,
        help="share of seeded examples trained with the key unknown (default: %(default)s)",
    )
    p.add_argument(
        "--reuse-prob",
        type=float,
        default=d.reuse_prob,
        help="share of seeded batches cut where the continuation reuses a figure of the seed",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument(
        "--steps-per-epoch", type=int, help="default: train notes / (batch * target-len)"
    )
    p.add_argument("--max-steps", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--eval-windows", type=int, default=d.eval_windows)
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    p.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="bf16 autocast on CPU (weights and optimizer stay fp32): about 2x the notes/s "
        "where the CPU has AMX or AVX-512 BF16 (see docs/benchmarks.md); slower elsewhere",
    )
    p.add_argument("--fp32-weights", action="store_true", help="save fp32 instead of fp16 weights")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--version", default="", help="version label stored in the checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    cfg = TrainConfig(
        out=args.out,
        corpus_path=args.corpus,
        init_from=args.init_from,
        resume_from=args.resume,
        d_embed=args.d_embed,
        hidden=args.hidden,
        layers=args.layers,
        dropout=args.dropout,
        attention=not args.no_attention,
        key_conditioning=not args.no_key,
        seed_max=args.seed_max,
        target_len=args.target_len,
        key_dropout=args.key_dropout,
        reuse_prob=args.reuse_prob,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        eval_windows=args.eval_windows,
        device=args.device,
        threads=args.threads,
        amp=not args.no_amp,
        cpu_bf16=args.cpu_bf16,
        half=not args.fp32_weights,
        seed=args.seed,
        version=args.version,
        progress=not args.quiet,
    )
    try:
        result = train(cfg)
    except MotifError as exc:
        print(f"motif train: {exc.user_message}")
        return 2
    print(
        f"checkpoint {result.checkpoint} ({result.steps} steps, {result.wall_s:.0f} s, "
        f"{result.tokens_per_s:,.0f} tokens/s); validation NLL/note {result.best_val_nll}; "
        f"test {result.test.get('nll_per_note')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
