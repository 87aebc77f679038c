"""Fixtures for the engine tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from engine.model.checkpoint import LoadedModel, load_checkpoint, save_checkpoint
from engine.model.events import EventCodec
from engine.model.network import ModelConfig, MotifSeq2Seq


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """An untrained one-layer network, the same in every run (for the copy path's tests)."""
    torch.manual_seed(0)
    codec = EventCodec()
    cfg = ModelConfig.for_codec(codec, d_embed=16, hidden=32, layers=1, n_key=25)
    path = tmp_path_factory.mktemp("tiny") / "m.pt"
    return load_checkpoint(save_checkpoint(path, MotifSeq2Seq(cfg), cfg, codec.config, {}))
