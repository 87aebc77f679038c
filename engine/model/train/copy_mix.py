"""The copy path mixed into the network, scored against real music: what its fit
(engine.model.train.copy_fit), the content gain (engine.model.fidelity) and training through it
(`copy_mixed_loss`, `motif train --through-copy`) share.

`observe` lines up, for every target note of a teacher-forced batch, the network's probability
of the truth with the copy path's votes for it; `mixed_p` mixes them as generation does
(engine.model.copy); `copy_nll` scores batches, and `copy_mixed_loss` trains by that number.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from engine.model.copy.copying import COPY_FIELDS, CopyMemory, CopyParams
from engine.model.copy.vote import Vote
from engine.model.events import DURATION, PITCH, POSITION, SHIFT, VELOCITY
from engine.model.network import IGNORE, MotifSeq2Seq

UNSCORED = "unscored_pitch"  # a batch's (B, T) pitches the loss leaves out (scheduled sampling)


def scored(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, T, 4) the targets' fields the loss scores: not IGNORE, and no pitch left out
    (UNSCORED, engine.model.train.scheduled)."""
    mask = batch["target"][..., :4] != IGNORE
    if UNSCORED in batch:
        mask[..., PITCH] &= ~batch[UNSCORED]
    return mask


def no_mix(max_match: int) -> tuple[tuple[float, ...], ...]:
    """Every lambda 0, for matches up to `max_match` figures."""
    return ((0.0,) * (2 * (max_match + 1)),) * len(COPY_FIELDS)


def teacher_forced(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model's logits of every field of a `collate` batch's targets, teacher-forced; fed
    the batch's `inputs` in place of its targets when it has them
    (engine.model.train.scheduled.sampled_inputs; otherwise none, so any seq2seq forward fits)."""
    fed = {"inputs": batch["inputs"]} if "inputs" in batch else {}
    return model(
        batch["seed"],
        batch["seed_len"],
        batch["style"],
        batch["target"],
        batch["key"],
        batch.get("lags"),
        **fed,
    )


def log_probs(model: MotifSeq2Seq, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The model's log-probabilities of every field of the batch's targets, teacher-forced."""
    return [torch.log_softmax(lg.float(), dim=-1) for lg in teacher_forced(model, batch)]


def field_sizes(model: MotifSeq2Seq) -> tuple[int, int, int]:
    cfg = model.config
    return cfg.n_shift, cfg.n_pitch, cfg.n_duration


def voter_weights(w: float, e: float, a: float, max_match: int) -> CopyParams:
    """Voter weights with every lambda 0: the votes alone, to score."""
    return CopyParams(w, e, no_mix(max_match), a)


def _field_votes(mem: CopyMemory, f: int, s: torch.Tensor, p: torch.Tensor) -> Vote:
    if f == SHIFT:
        return mem.shift_votes()
    if f == PITCH:
        return mem.pitch_votes(s)
    return mem.duration_votes(s, p)


def note_fields(note: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shift, pitch and duration columns of notes (B, 5+), (B, 1) each."""
    return note[:, SHIFT : SHIFT + 1], note[:, PITCH : PITCH + 1], note[:, DURATION : DURATION + 1]


def _at(probs: torch.Tensor, index: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """probs (B, n) at index (B, 1), the scored rows only."""
    return probs.gather(1, index.clamp_min(0))[:, 0][scored]


def observe(
    model: MotifSeq2Seq,
    batch: dict[str, torch.Tensor],
    logp: list[torch.Tensor],
    grid: Sequence[tuple[float, float, float]],
    max_match: int,
) -> dict[str, torch.Tensor]:
    """Per predicted field of every target note: the log-probability of the truth in `logp`
    (`log_probs`; "m", with its gradient, if any), the votes' probability of it ("c", a column
    per (weight, exact, aligned) of `grid`), the best voter's level ("b"; -1: none), the
    lookback's vote and level ("g", "l"); for pitches, the same for the latest pitch and the
    repeat cell ("rm", "rc", "rg", "rcell", "ris": the truth repeats it). Flat tensors."""
    seed, seed_len, target = batch["seed"], batch["seed_len"], batch["target"]
    # what the memory holds: the targets, or the notes fed in their place (scheduled sampling)
    history = batch.get("inputs", target)
    mask = scored(batch)  # (B, T, 4)
    sizes, T = field_sizes(model), target.size(1)
    out: dict[str, list[torch.Tensor]] = {f"{k}{f}": [] for f in COPY_FIELDS for k in "mcbgl"}
    out.update({k: [] for k in ("rm", "rc", "rg", "rcell", "ris")})
    n_position = model.config.n_position
    memories = [
        CopyMemory(
            seed, seed_len, sizes, voter_weights(w, e, a, max_match), T, n_position=n_position
        )
        for w, e, a in grid
    ]
    first = memories[0]
    for t in range(T):
        truth = target[:, t]  # (B, 5)
        s, p, d = note_fields(truth)
        cell, last = first.repeat_cell(s)
        for f, value in ((SHIFT, s), (PITCH, p), (DURATION, d)):
            rows = mask[:, t, f]  # (B,) the rows that score this field here
            if not bool(rows.any()):
                continue
            each = [_field_votes(mem, f, s, p) for mem in memories]
            votes = [v.votes for v in each]
            out[f"b{f}"].append(each[0].level[:, 0][rows])
            out[f"m{f}"].append(_at(logp[f][:, t], value, rows))
            out[f"c{f}"].append(torch.stack([_at(v, value, rows) for v in votes], dim=1))
            vote, _, level = first.lookback_votes(f, s, p)
            out[f"g{f}"].append(_at(vote, value, rows))
            out[f"l{f}"].append(level[rows])
            if f == PITCH:  # the latest pitch again: what the repeat bias acts on
                again = last[:, None]
                out["rm"].append(_at(logp[f][:, t], again, rows))
                out["rc"].append(torch.stack([_at(v, again, rows) for v in votes], dim=1))
                out["rg"].append(_at(vote, again, rows))
                out["rcell"].append(cell[rows])
                out["ris"].append((p[:, 0] == last)[rows])
        note = history[:, t]
        for mem in memories:
            mem.append(*note_fields(note), note[:, POSITION : POSITION + 1])
    velocity = target[..., VELOCITY]
    vel_nll = -logp[VELOCITY].gather(2, velocity.clamp_min(0)[..., None])[..., 0]
    result = {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}
    result["velocity_nll"] = (vel_nll * mask[..., VELOCITY]).sum().double()
    result["notes"] = (target[..., SHIFT] != IGNORE).sum()
    return result


def collect(
    model: MotifSeq2Seq,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    grid: Sequence[tuple[float, float, float]],
    max_match: int,
) -> dict[str, torch.Tensor]:
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            seen = observe(model, batch, log_probs(model, batch), grid, max_match)
        for k, v in seen.items():
            parts.setdefault(k, []).append(v.cpu().reshape(-1) if v.dim() <= 1 else v.cpu())
    model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def mixed_nll(logp_model: torch.Tensor, p_copy: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    p = torch.exp(logp_model.double()) * (1 - lam) + p_copy.double() * lam
    return -torch.log(p.clamp_min(1e-300))


def by_level(table: Sequence[float], level: torch.Tensor) -> torch.Tensor:
    """table[level] per note, 0 where the level is -1."""
    values = torch.tensor(table, dtype=torch.float64)
    return torch.where(level >= 0, values[level.clamp_min(0)], 0.0)


def mixed_p(
    seen: dict[str, torch.Tensor], f: int, params: CopyParams, col: int, key: str = ""
) -> torch.Tensor:
    """The mixed probability (network, copy votes, lookback) of each scored note's true value of
    field f, or (key "r") of the latest pitch."""
    i = COPY_FIELDS.index(f)
    lam = by_level(params.mix[i], seen[f"b{f}"])
    mu = by_level(params.lookback[i], seen[f"l{f}"])
    m, c, g = (
        (seen["rm"], seen["rc"], seen["rg"])
        if key
        else (seen[f"m{f}"], seen[f"c{f}"], seen[f"g{f}"])
    )
    p_copy = torch.exp(-mixed_nll(m, c[:, col], lam))
    return p_copy * (1 - mu) + g.double() * mu


def nll_sum(seen: dict[str, torch.Tensor], params: CopyParams, weight_col: int) -> torch.Tensor:
    """The NLL of every note's four fields with the copy path mixed in, summed (a tensor that
    keeps the gradient of `seen`'s "m" figures)."""
    fields = nll_by_field(seen, params, weight_col).values()
    return seen["velocity_nll"].sum() + torch.stack(list(fields)).sum()


def nll_by_field(
    seen: dict[str, torch.Tensor], params: CopyParams, weight_col: int
) -> dict[int, torch.Tensor]:
    """The summed NLL of each copied field with the copy path mixed in."""
    per_field = {}
    for f in COPY_FIELDS:
        nll_each = -torch.log(mixed_p(seen, f, params, weight_col).clamp_min(1e-300))
        if f == PITCH and params.repeats:
            p_rep = mixed_p(seen, f, params, weight_col, "r")
            bias = by_level(tuple(b for row in params.repeat for b in row), seen["rcell"])
            nll_each = (
                nll_each - bias * seen["ris"].double() + torch.log1p(p_rep * torch.expm1(bias))
            )
        per_field[f] = nll_each.sum()
    return per_field


def nll_of(seen: dict[str, torch.Tensor], params: CopyParams, weight_col: int) -> dict[str, Any]:
    """NLL per note event, the notes and the NLL of each copied field, as numbers."""
    per_field = {f: float(v) for f, v in nll_by_field(seen, params, weight_col).items()}
    total = float(seen["velocity_nll"].sum()) + sum(per_field.values())
    notes = int(seen["notes"].sum())
    return {"nll_per_note": total / max(1, notes), "notes": notes, "fields": per_field}


def copy_nll(
    model: MotifSeq2Seq,
    batches: Iterable[dict[str, torch.Tensor]],
    device: torch.device,
    params: CopyParams,
) -> dict[str, Any]:
    """NLL per note event (four fields summed) of the batches' real targets with the copy path
    mixed in (`params`; NO_COPY gives the model's own NLL)."""
    grid = ((params.weight, params.exact, params.aligned),)
    seen = collect(model, batches, device, grid, params.max_match)
    if int(seen["notes"].sum()) == 0:
        return {}
    return nll_of(seen, params, 0)


def own_nll_sum(seen: dict[str, torch.Tensor]) -> torch.Tensor:
    """The network's own NLL of the notes `observe` scored, four fields summed (with the
    gradient of its "m" figures): the same notes and fields as `nll_sum`, no copy path."""
    copied = torch.stack([-seen[f"m{f}"].double().sum() for f in COPY_FIELDS]).sum()
    return seen["velocity_nll"] + copied


def copy_mixed_loss(
    model: MotifSeq2Seq,
    batch: dict[str, torch.Tensor],
    params: CopyParams,
    own_share: float = 0.0,
    confidence_penalty: float = 0.0,
) -> torch.Tensor:
    """The training loss through the copy path: NLL per note event of the batch's targets with
    `params`' copy path mixed into the network, so what the network learns complements it.
    `own_share` of it is the network's own NLL instead (`motif train --own-share`): under teacher
    forcing the copy path's matches run on, so a loss wholly through it lets the network leave
    the seed's return to them; in free generation the matches end. `confidence_penalty`: that
    many times the network's own entropy per note is taken off (Pereyra et al., 2017), so it
    stays as unsure as it was rather than growing sharp where the copy path agrees with it."""
    grid = ((params.weight, params.exact, params.aligned),)
    logp = log_probs(model, batch)
    seen = observe(model, batch, logp, grid, params.max_match)
    notes = (batch["target"][..., SHIFT] != IGNORE).sum().clamp_min(1)
    total = nll_sum(seen, params, 0)
    if own_share > 0.0:
        total = (1.0 - own_share) * total + own_share * own_nll_sum(seen)
    if confidence_penalty > 0.0:
        total = total - confidence_penalty * entropy_sum(logp, batch)
    return (total / notes).float()


def entropy_sum(logp: list[torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The entropy (nats) of the network's own distribution of each field at every target the
    loss scores (`observe`'s notes: not IGNORE, pitches not UNSCORED), summed."""
    mask = scored(batch)
    each = [-(lp.exp() * lp).sum(dim=-1) * mask[..., f] for f, lp in enumerate(logp)]  # (B, T)
    return torch.stack([e.sum().double() for e in each]).sum()
