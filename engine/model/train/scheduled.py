"""Scheduled sampling against exposure bias (`motif train --sampled-inputs`, `--sampled-ramp`):
two passes (Mihaylova and Martins, 2019). A teacher-forced pass without gradient and without
dropout draws a pitch for every target note; a share of the notes are then fed to the trained
pass with the drawn pitch instead of the true one, as in generation, where the history is the
model's own. The targets stay the real notes."""

from __future__ import annotations

import torch

from engine.errors import BadParams
from engine.model.copy.copying import CopyMemory, CopyParams
from engine.model.events import PITCH, POSITION, SHIFT, EventCodec
from engine.model.lags import window_lags
from engine.model.network import MotifSeq2Seq
from engine.model.train.copy_mix import UNSCORED, field_sizes, log_probs, note_fields


def sampled_inputs(
    model: MotifSeq2Seq,
    batch: dict[str, torch.Tensor],
    share: float,
    codec: EventCodec | None = None,
    amp_dtype: torch.dtype | None = None,
    params: CopyParams | None = None,
    skip_next: bool = False,
) -> dict[str, torch.Tensor]:
    """The batch with `inputs`: its targets with `share` of the notes' pitches drawn (the
    decoder, the pointer's figures and the copy path's memory read them; with `codec` the lag
    inputs are rebuilt from them). Drawn from the network, or with `params` from the network with
    that copy path mixed in, note after note over the fed history, as generation draws. Uses
    torch's global generators, which a resumed run restores. `skip_next`: `unscored_pitch`
    (B, T) marks the note right after each drawn one, whose pitch the loss leaves out: the real
    melody's next step answers the real pitch, not the drawn one, and scoring it would teach the
    network to step back after a note of its own (docs/form-judge.md, step seven)."""
    if share <= 0.0:
        return batch
    target = batch["target"]
    real = target[..., PITCH] >= 0
    swap = real & (torch.rand(real.shape, device=target.device) < share)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(target.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.no_grad(), autocast:
        logp = log_probs(model, batch)[PITCH]  # (B, T, n_pitch), float32
    model.train(was_training)
    inputs = target.clone()
    if params is None or params.off:
        drawn = torch.multinomial(logp.reshape(-1, logp.size(-1)).exp(), 1).view(real.shape)
        inputs[..., PITCH] = torch.where(swap, drawn, target[..., PITCH])
    else:
        _draw_through_copy(model, batch, logp, swap, inputs, params)
    out = {**batch, "inputs": inputs}
    if skip_next:  # after a fed pitch that is not the real one
        changed = inputs[..., PITCH] != target[..., PITCH]
        unscored = torch.zeros_like(changed)
        unscored[:, 1:] = changed[:, :-1]
        out[UNSCORED] = unscored
    if "lags" in batch and model.config.lag_inputs:
        if codec is None:
            raise BadParams("scheduled sampling with lag inputs needs the codec to rebuild them")
        out["lags"] = fed_lags(batch, inputs, codec)
    return out


def _draw_through_copy(
    model: MotifSeq2Seq,
    batch: dict[str, torch.Tensor],
    logp: torch.Tensor,
    swap: torch.Tensor,
    inputs: torch.Tensor,
    params: CopyParams,
) -> None:
    """Fill `inputs`' swapped pitches, note by note: each drawn from the network's pitch
    distribution (given the true shift) with the copy path's memory of the fed notes so far
    mixed in (CopyMemory.mixed, as generation's decoder calls it)."""
    sizes, T = field_sizes(model), inputs.size(1)
    memory = CopyMemory(
        batch["seed"], batch["seed_len"], sizes, params, T, n_position=model.config.n_position
    )
    for t in range(T):
        note = inputs[:, t]  # (B, 5+), a view: the drawn pitch is written into `inputs`
        shift = note[:, SHIFT : SHIFT + 1].clamp(0, sizes[SHIFT] - 2)  # EOS, padding: drawn, unused
        mixed = memory.mixed(PITCH, logp[:, t], shift)
        drawn = torch.multinomial(torch.softmax(mixed.float(), dim=-1), 1)[:, 0]
        note[:, PITCH] = torch.where(swap[:, t], drawn, note[:, PITCH])
        memory.append(*note_fields(note), note[:, POSITION : POSITION + 1])


def fed_lags(
    batch: dict[str, torch.Tensor], inputs: torch.Tensor, codec: EventCodec
) -> torch.Tensor:
    """The lag inputs (B, T, columns) of each step when the previous notes are `inputs`, as
    `collate` builds them from the true ones (a fed pitch changes whether it repeats the
    lagged note)."""
    cfg, seed, seed_len = codec.config, batch["seed"].cpu(), batch["seed_len"].cpu()
    rows = [
        window_lags(seed[i, : int(seed_len[i])], fed, cfg.max_shift, cfg.max_position)
        for i, fed in enumerate(inputs.cpu())
    ]
    return torch.stack(rows).to(batch["lags"].device)


def ramp_share(share: float, ramp: bool, progress: float) -> float:
    """The share a step feeds: `share`, or with `ramp` `share` x the run's progress (0..1)."""
    return share * min(1.0, max(0.0, progress)) if ramp else share
