"""What a voter of the copy path gives for one field: its votes, their weight in the mixture,
and the level that weight was looked up by (which `copy_fit` fits the weights per)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Vote(NamedTuple):
    votes: torch.Tensor  # (B, n_classes), each row summing to 1 (or all 0: no voter)
    weight: torch.Tensor  # (B, 1) its weight in the mixture (lambda or mu)
    level: torch.Tensor  # the level the weight was looked up by; -1: no voter


def mix_logits(logits: torch.Tensor, votes: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """log((1 - lam) softmax(logits) + lam votes): logits (B, n), votes (B, n) summing to 1 (or
    0 where lam is 0), lam (B, 1). -inf stays -inf where neither gives the class any weight.
    Rows where lam is 0 keep their logits bit for bit (so a row without copying samples the
    same alone or beside rows that copy); chosen per row by `where`, as asking which rows copy
    would cost the GPU a host read per note."""
    p = torch.softmax(logits.float(), dim=-1) * (1 - lam) + votes * lam
    log = torch.log(p)
    return torch.where(lam > 0, log if log.dtype == logits.dtype else log.to(logits.dtype), logits)
