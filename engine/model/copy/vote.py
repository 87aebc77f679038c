"""What a voter of the copy path gives for one field: its votes, their weight in the mixture,
and the level that weight was looked up by (which `copy_fit` fits the weights per)."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Vote(NamedTuple):
    votes: torch.Tensor  # (B, n_classes), each row summing to 1 (or all 0: no voter)
    weight: torch.Tensor  # (B, 1) its weight in the mixture (lambda or mu)
    level: torch.Tensor  # the level the weight was looked up by; -1: no voter
