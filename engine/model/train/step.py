"""One training step and the evaluation: the loss per field, the optimizer, the learning rate
schedule, `train_step` (bench/train_bench.py times that very function) and `evaluate_nll`, what
the promotion gate compares models with."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F

from engine.errors import BadParams
from engine.model.checkpoint import LoadedModel
from engine.model.copy.copying import shipped_params
from engine.model.events import SHIFT, EventCodec
from engine.model.network import IGNORE, MotifSeq2Seq
from engine.model.train.config import TrainConfig
from engine.model.train.copy_mix import copy_mixed_loss, copy_nll, scored, teacher_forced
from engine.model.train.data import encode_pieces, eval_batches
from engine.model.train.scheduled import ramp_share, sampled_inputs
from engine.music.notes import Piece

log = logging.getLogger(__name__)

FIELD_NAMES = ("shift", "pitch", "duration", "velocity")
EVAL_SEED_LEN = 64  # evaluation windows: fixed, so NLLs of different models compare
EVAL_TARGET_LEN = 64


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


def make_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW, weight decay on weight matrices only (not embeddings, biases, start vectors).
    Fused on CPU and CUDA: one kernel over all tensors instead of ~10 small ops per tensor, which
    on CPU cost more than the update itself (the result differs only in the last bits)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    table = ("embed", ".tables.")  # embeddings (the pointer's figure tables too)
    decay = [p for n, p in named if p.dim() >= 2 and not any(t in n for t in table)]
    no_decay = [p for n, p in named if p.dim() < 2 or any(t in n for t in table)]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.99),
        fused=device.type in ("cpu", "cuda"),
    )


# parts a fine-tune may add to its base model: they start at zero or shut, so change nothing at first
ADDED_PARTS = ("phrase", "embed.lag.", "pointer.")


def load_base(model: torch.nn.Module, base: torch.nn.Module, name: object) -> None:
    """The base model's weights into `model`, strictly but for the ADDED_PARTS it lacks."""
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not any(a in n for a in ADDED_PARTS) for n in missing):
        raise BadParams(f"{name} does not fit: {missing + unexpected}")


def freeze(model: torch.nn.Module, train_only: str) -> list[str]:
    """Leave only the parameters whose names start with one of `train_only`'s comma-separated
    prefixes trainable (empty: all); returns their names. A prefix that names nothing is an
    error, so a typo never trains nothing."""
    prefixes = [p.strip() for p in train_only.split(",") if p.strip()]
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise BadParams(f"--train-only {prefix!r} names no parameter of this model")
    kept = [n for n in names if not prefixes or any(n.startswith(p) for p in prefixes)]
    for n, p in model.named_parameters():
        p.requires_grad_(n in kept)
    if prefixes:
        log.info("training %d of the model's parameter tensors: %s", len(kept), kept)
    return kept


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 1.0,
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """One optimizer step on a batch already on the model's device (a `collate` dict):
    teacher-forced forward (under autocast when `amp_dtype` is set), NLL per note event,
    backward, gradient clipping, optimizer step. `scaler`: an enabled GradScaler for fp16;
    `loss_fn`: another loss of (model, batch) instead of the network's own NLL.

    Returns the loss, detached and still on the device: reading it waits for the step to finish,
    so the loop reads losses only when it logs."""
    target = batch["target"]
    with torch.autocast(target.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if loss_fn is not None:  # e.g. through the copy path (`objective`)
            loss = loss_fn(model, batch)
        else:
            logits = teacher_forced(model, batch)
    if loss_fn is None:
        nll = field_nll(logits, target).masked_fill(~scored(batch), 0.0)
        loss = nll.sum() / (target[..., SHIFT] != IGNORE).sum()
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
def evaluate_windows(model: MotifSeq2Seq, batches, device: torch.device) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total = torch.zeros(4, dtype=torch.float64)
    counted = torch.zeros(4, dtype=torch.float64)
    notes = 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        target = batch["target"]
        logits = teacher_forced(model, batch)
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


def _check_objective(
    through_copy: bool,
    sampled_share: float,
    sampled_ramp: bool,
    skip_next: bool,
    own_share: float,
    confidence_penalty: float,
) -> None:
    """BadParams for an objective's options that do not fit together (`objective`)."""
    if not 0.0 <= sampled_share <= 1.0:
        raise BadParams(f"--sampled-inputs must be a share from 0 to 1, not {sampled_share:g}")
    if sampled_ramp and sampled_share <= 0.0:
        raise BadParams("--sampled-ramp raises the share to --sampled-inputs: give that too")
    if skip_next and sampled_share <= 0.0:
        raise BadParams(
            "--sampled-skip-next skips what follows a drawn pitch: give --sampled-inputs"
        )
    if not 0.0 <= own_share < 1.0:
        raise BadParams(f"--own-share must be a share from 0 up to (not) 1, not {own_share:g}")
    if own_share > 0.0 and not through_copy:
        raise BadParams("--own-share mixes the network's own NLL into --through-copy: give that")
    if not 0.0 <= confidence_penalty < 1.0:
        raise BadParams(
            f"--confidence-penalty must be from 0 up to (not) 1, not {confidence_penalty:g}"
        )
    if confidence_penalty > 0.0 and not through_copy:
        raise BadParams("--confidence-penalty acts on the loss through --through-copy: give that")


def objective(
    through_copy: bool,
    sampled_share: float = 0.0,
    sampled_ramp: bool = False,
    codec: EventCodec | None = None,
    *,
    skip_next: bool = False,
    own_share: float = 0.0,
    confidence_penalty: float = 0.0,
) -> tuple[Callable[..., torch.Tensor], Callable[..., dict]]:
    """A run's training step and validation score: the network's own NLL, or (`through_copy`)
    the NLL with the shipped copy path mixed in (engine.model.train.copy_mix), as generation
    decodes. `sampled_share`: each step feeds that share of its notes with a drawn pitch
    (`sampled_inputs`; with `sampled_ramp` the share rises from 0 with the run's `progress`, as
    in Bengio et al., 2015; `codec` rebuilds the lag inputs; through the copy path the pitches
    are drawn with it mixed in; `skip_next`: the pitch after a drawn one is not scored).
    `own_share`, `confidence_penalty`: `copy_mixed_loss`'s. Validation stays teacher-forced on
    the real notes, so scores compare across runs."""
    _check_objective(
        through_copy, sampled_share, sampled_ramp, skip_next, own_share, confidence_penalty
    )
    evaluate: Callable[..., dict] = evaluate_windows
    step: Callable[..., torch.Tensor] = train_step
    params = shipped_params()
    if through_copy:

        def evaluate(model: MotifSeq2Seq, batches: Any, device: torch.device) -> dict:
            nll = copy_nll(model, batches, device, params)
            return {k: v for k, v in nll.items() if k != "fields"}

        loss_fn = partial(
            copy_mixed_loss,
            params=params,
            own_share=own_share,
            confidence_penalty=confidence_penalty,
        )
        step = partial(train_step, loss_fn=loss_fn)

    def run_step(
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        *args: Any,
        progress: float = 1.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        share = ramp_share(sampled_share, sampled_ramp, progress)
        feeding = sampled_inputs(
            cast(MotifSeq2Seq, model),
            batch,
            share,
            codec,
            kwargs.get("amp_dtype"),
            params if through_copy else None,
            skip_next,
        )
        return step(model, feeding, *args, **kwargs)

    return run_step, evaluate


def evaluate_nll(
    lm: LoadedModel,
    pieces: list[Piece],
    *,
    batch_size: int = 64,
    seed_len: int = EVAL_SEED_LEN,
    target_len: int = EVAL_TARGET_LEN,
    max_windows: int | None = None,
    dtype: torch.dtype | None = None,
    with_copy: bool = False,
) -> dict[str, float]:
    """Mean NLL per note event (notes and the end of each piece; nats, all four fields summed)
    and per field, on fixed windows of `pieces` with the pieces' own styles. Empty dict if
    there is nothing to score. `dtype` (e.g. torch.bfloat16): score a copy of the model whose
    weights and arithmetic are in that precision (the loss itself in float32). `with_copy`:
    the NLL per note of the distribution generation draws from, the shipped copy path mixed in
    (engine.model.train.copy_mix; no per-field figures); the network's own where it is off."""
    data = encode_pieces(lm.codec, pieces)
    batches = eval_batches(data, lm.codec, batch_size, seed_len, target_len, max_windows)
    model = lm.model
    if dtype is not None and dtype != next(model.parameters()).dtype:
        model = copy.deepcopy(model).to(dtype)
    params = shipped_params()
    if with_copy and not params.off:
        nll = copy_nll(model, batches, lm.device, params)
        return {k: v for k, v in nll.items() if k != "fields"}
    return evaluate_windows(model, batches, lm.device)


def learning_rate(cfg: TrainConfig, progress: float, step: int) -> float:
    """The rate at `step`, `progress` (0..1) through the run: linear warm-up, then cosine down
    to min_lr_frac (or constant)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    if cfg.schedule == "constant":
        return cfg.lr * warm
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * cos)
