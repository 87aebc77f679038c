"""Training throughput: Motif's training step (engine/train.py's forward, loss, backward, clip,
AdamW) against a bare `nn.LSTM` seq2seq of the same width on the same batches.

The bare model is what the layers alone cost: summed column embeddings → `nn.LSTM` encoder →
`nn.LSTM` decoder started from the encoder's state → one linear head per field. The ratio says
what Motif's extras (per-layer encoder, bridge, attention, conditioned MLP heads) cost.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bench import workload
from engine.model import IGNORE, SHIFT, ModelConfig, MotifSeq2Seq
from engine.train import TrainConfig, encode_pieces, field_nll, sample_batch

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

    def forward(self, seed, seed_len, style, target, key=None) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
        _, state = self.encoder(self.embed(seed.clamp_min(0)))  # (L, B, H) each
        note = target.clamp_min(0)  # (B, T, 5)
        prev = self.embed(note[:, :-1])  # (B, T-1, D)
        start = self.embed_start.expand(note.size(0), 1, -1)  # (B, 1, D)
        out, _ = self.decoder(torch.cat([start, prev], dim=1), state)  # (B, T, H)
        return [head(out) for head in self.heads]


def train_step(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    """One optimizer step exactly as engine/train.py's loop takes it on CPU (no autocast;
    a disabled GradScaler), for any model with Motif's forward signature."""

    def make(model: nn.Module):  # type: ignore[no-untyped-def]
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.99), fused=False,
        )  # fmt: skip
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        model.train()

        def step(batch: dict[str, torch.Tensor]) -> int:
            target = batch["target"]
            logits = model(batch["seed"], batch["seed_len"], batch["style"], target, batch["key"])
            n_notes = (target[..., SHIFT] != IGNORE).sum()
            loss = field_nll(logits, target).sum() / n_notes
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss.detach().item()
            return int(n_notes)

        return step

    return make


def run(
    repeats: int = 5,
    steps: int = 4,
    batch_size: int | None = None,
    model_path: str | None = None,
    corpus_path: str | None = None,
) -> dict[str, Any]:
    """Notes (target tokens) per second of `steps` training steps per round, Motif then bare on
    the same batches, median of `repeats` rounds; ratio = Motif / bare per round, median.
    Batches are drawn once by engine.train.sample_batch with TrainConfig's defaults."""
    choice = workload.motif_model(model_path)
    mcfg = choice.lm.config
    cfg = TrainConfig() if batch_size is None else TrainConfig(batch_size=batch_size)
    pieces, music_label = workload.music(64, corpus_path)
    data = encode_pieces(choice.lm.codec, pieces)
    rng = np.random.default_rng(0)
    batches = [sample_batch(rng, data, choice.lm.codec, cfg) for _ in range(steps)]

    torch.manual_seed(0)
    motif = MotifSeq2Seq(mcfg)
    motif.load_state_dict(choice.lm.model.state_dict())
    bare = BareSeq2Seq(mcfg)
    make = train_step(cfg)
    subjects = {"motif": make(motif), "bare": make(bare)}
    for step in subjects.values():  # warm
        step(batches[0])

    def rounds(step):  # type: ignore[no-untyped-def]
        return lambda: sum(step(b) for b in batches)

    t = workload.interleaved({k: rounds(v) for k, v in subjects.items()}, repeats)
    rate = {k: [n / s for s, n in v] for k, v in t.items()}
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
        "ratio": workload.median([m / b for m, b in zip(rate["motif"], rate["bare"], strict=True)]),
        "ratio_target": 0.7,
    }
