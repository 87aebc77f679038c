"""Training throughput: Motif's training step (`engine.model.train.step.train_step`: forward, loss, backward,
clip, AdamW) against a bare `nn.LSTM` seq2seq of the same width, taking that same step on the same
batches.

The bare model is what the layers alone cost: summed column embeddings → `nn.LSTM` encoder →
`nn.LSTM` decoder started from the encoder's state → one linear head per field. The ratio says
what Motif's extras (per-layer encoder, bridge, attention, conditioned MLP heads) cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bench import workload
from engine.model.events import SHIFT
from engine.model.network import IGNORE, ModelConfig, MotifSeq2Seq
from engine.model.train.config import TrainConfig
from engine.model.train.data import encode_pieces, sample_batch
from engine.model.train.run import cpu_has_native_bf16
from engine.model.train.step import make_optimizer, train_step

log = logging.getLogger(__name__)


class BareSeq2Seq(nn.Module):
    """The plainest seq2seq LSTM with Motif's inputs, outputs and width."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D, H, L = cfg.d_embed, cfg.hidden, cfg.layers
        sizes = (cfg.n_shift, cfg.n_pitch, cfg.n_duration, cfg.n_velocity, cfg.n_position)
        self.embed_columns = nn.ModuleList(nn.Embedding(n, D) for n in sizes)
        self.embed_start = nn.Parameter(torch.zeros(D))
        drop = cfg.dropout if L > 1 else 0.0
        self.encoder = nn.LSTM(D, H, L, batch_first=True, dropout=drop)
        self.decoder = nn.LSTM(D, H, L, batch_first=True, dropout=drop)
        self.heads = nn.ModuleList(nn.Linear(H, n) for n in sizes[:4])

    def embed(self, events: torch.Tensor) -> torch.Tensor:
        x = 0
        for col, emb in enumerate(self.embed_columns):
            x = x + emb(events[..., col])
        return x  # (B, T, D)

    def forward(self, seed, seed_len, style, target, key=None, lags=None) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        _, state = self.encoder(self.embed(seed.clamp_min(0)))  # (L, B, H) each
        note = target.clamp_min(0)  # (B, T, 5)
        prev = self.embed(note[:, :-1])  # (B, T-1, D)
        start = self.embed_start.expand(note.size(0), 1, -1)  # (B, 1, D)
        out, _ = self.decoder(torch.cat([start, prev], dim=1), state)  # (B, T, H)
        return [head(out) for head in self.heads]


def training_round(
    model: nn.Module,
    cfg: TrainConfig,
    batches: list[dict[str, torch.Tensor]],
    amp_dtype: torch.dtype | None = None,
) -> Callable[[], int]:
    """One call: one `engine.model.train.step.train_step` per batch, exactly as engine/model/train/train.py's loop takes
    it on CPU (its optimizer, no loss scaling; bf16 autocast as `--cpu-bf16` when `amp_dtype`);
    returns the notes trained on."""
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    notes = sum(int((b["target"][..., SHIFT] != IGNORE).sum()) for b in batches)
    model.train()

    def one_round() -> int:
        for batch in batches:
            loss = train_step(model, batch, optimizer, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip)
        loss.item()  # the loop reads its losses too; on an accelerator, this waits for the work
        return notes

    return one_round


def run(
    repeats: int = 5,
    steps: int = 4,
    batch_size: int | None = None,
    model_path: str | None = None,
    corpus_path: str | None = None,
) -> dict[str, Any]:
    """Notes (target tokens) per second of `steps` training steps per round: Motif and bare, each
    in fp32 (today's default) and under bf16 autocast (`--cpu-bf16`), in turns on the same
    batches, median of `repeats` rounds; ratios per round, median. Batches are drawn once by
    engine.model.train.data.sample_batch with TrainConfig's defaults."""
    choice = workload.motif_model(model_path)
    mcfg = choice.lm.config
    cfg = TrainConfig() if batch_size is None else TrainConfig(batch_size=batch_size)
    pieces, music_label = workload.music(64, corpus_path)
    data = encode_pieces(choice.lm.codec, pieces)
    rng = np.random.default_rng(0)
    batches = [sample_batch(rng, data, choice.lm.codec, cfg) for _ in range(steps)]

    subjects = {}
    for precision, amp_dtype in (("", None), ("_bf16", torch.bfloat16)):
        torch.manual_seed(0)
        motif = MotifSeq2Seq(mcfg)
        motif.load_state_dict(choice.lm.model.state_dict())
        bare = BareSeq2Seq(mcfg)
        subjects["motif" + precision] = training_round(motif, cfg, batches, amp_dtype)
        subjects["bare" + precision] = training_round(bare, cfg, batches, amp_dtype)
    for one_round in subjects.values():  # warm: every batch shape once
        one_round()

    t = workload.interleaved(subjects, repeats)
    rate = {k: [n / s for s, n in v] for k, v in t.items()}

    def ratio(a: str, b: str) -> float:
        return workload.median([x / y for x, y in zip(rate[a], rate[b], strict=True)])

    target_cells = sum(int(b["target"][..., SHIFT].numel()) for b in batches)
    return {
        "model": choice.label,
        "music": music_label,
        "repeats": repeats,
        "steps_per_round": steps,
        "batch": f"{cfg.batch_size} x (seed <= {cfg.seed_max}, target {cfg.target_len})",
        "notes_per_round": t["motif"][0][1],
        "motif_params": sum(p.numel() for p in motif.parameters()),
        "bare_params": sum(p.numel() for p in bare.parameters()),
        "motif_notes_per_s": workload.median(rate["motif"]),
        "bare_notes_per_s": workload.median(rate["bare"]),
        "ratio": ratio("motif", "bare"),
        "ratio_target": 0.9,
        "motif_bf16_notes_per_s": workload.median(rate["motif_bf16"]),
        "bare_bf16_notes_per_s": workload.median(rate["bare_bf16"]),
        "ratio_bf16": ratio("motif_bf16", "bare_bf16"),
        "bf16_speedup": ratio("motif_bf16", "motif"),
        "bf16_speedup_target": 2.0,
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        # share of the (B, T) target cells that hold a note or EOS: the most packing could win
        "target_occupancy": t["motif"][0][1] / target_cells,
    }
