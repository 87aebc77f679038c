"""Self-describing model checkpoints: weights, model and tokenizer configs and metrics in one file.

`load_checkpoint` rebuilds the model and its codec from the file alone, so a checkpoint never
depends on a vocabulary or config kept elsewhere.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from engine.errors import BadCheckpoint, BadParams, NotFound
from engine.model.events import EventCodec, TokenizerConfig
from engine.model.network import ModelConfig, MotifSeq2Seq

log = logging.getLogger(__name__)

FORMAT = "motif-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready to generate, with the codec that gives its events a meaning."""

    model: MotifSeq2Seq
    codec: EventCodec
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return self.codec.config


def pick_device(setting: str = "auto") -> torch.device:
    """`auto`: CUDA when there is one, else CPU; `cpu`; `cuda` or `cuda:N`."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting == "cpu":
        return torch.device("cpu")
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadParams(f"device {setting!r} was asked for but no CUDA device is available")
        return torch.device(setting)
    raise BadParams(f"unknown device {setting!r}; use auto, cpu or cuda")


def device_label(device: torch.device) -> str:
    """The device as people know it: `cpu`, or `cuda:0 NVIDIA H200` (at most 32 characters,
    the width of the `workers.device` and `requests.device` columns)."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"[:32]


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta as plain JSON types, so the file loads with `weights_only=True`."""
    return json.loads(json.dumps(meta, default=str))


def save_checkpoint(
    path: str | Path,
    model: MotifSeq2Seq,
    model_config: ModelConfig,
    tokenizer_config: TokenizerConfig,
    meta: dict[str, Any] | None = None,
    *,
    half: bool = True,
) -> Path:
    """Write the checkpoint atomically (temp file + rename). `half`: fp16 weights (half the
    size; they are restored to fp32 on load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    state = {
        k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    blob = {
        "format": FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_config": asdict(model_config),
        "tokenizer_config": tokenizer_config.to_dict(),
        "weights_dtype": str(dtype).removeprefix("torch."),
        "state_dict": state,
        "meta": _plain(meta or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is shipped and shared
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NotFound(f"model checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a corrupt or foreign file
        raise BadCheckpoint(
            f"{path} is not a readable Motif checkpoint", detail=f"{path}: {exc!r}"
        ) from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise BadCheckpoint(f"{path} is not a Motif checkpoint (no '{FORMAT}' header)")
    version = blob.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise BadCheckpoint(
            f"{path} has checkpoint format {version!r}; this Motif reads up to {CHECKPOINT_FORMAT_VERSION}"
        )
    for key in ("model_config", "tokenizer_config", "state_dict"):
        if not isinstance(blob.get(key), dict):
            raise BadCheckpoint(f"{path} is missing its {key}")
    return blob


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The meta dict (metrics, corpus hash, version, ...) without building the model."""
    return dict(_read(Path(path)).get("meta") or {})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model, its codec and configs from the file alone; weights in fp32, eval mode."""
    path = Path(path)
    blob = _read(path)
    try:
        tok_cfg = TokenizerConfig.from_dict(blob["tokenizer_config"])
        known = {f.name for f in fields(ModelConfig)}
        model_cfg = ModelConfig(**{k: v for k, v in blob["model_config"].items() if k in known})
    except (TypeError, ValueError) as exc:
        raise BadCheckpoint(f"{path} has an invalid config: {exc}") from exc
    codec = EventCodec(tok_cfg)
    expected = ModelConfig.for_codec(codec)
    for name in ("n_shift", "n_pitch", "n_duration", "n_velocity", "n_position", "n_style"):
        if getattr(model_cfg, name) != getattr(expected, name):
            raise BadCheckpoint(
                f"{path}: model {name}={getattr(model_cfg, name)} does not match its tokenizer "
                f"({getattr(expected, name)})"
            )
    model = MotifSeq2Seq(model_cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadCheckpoint(
            f"{path}: the weights do not fit the model config", detail=str(exc)
        ) from exc
    device = pick_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    return LoadedModel(
        model=model, codec=codec, config=model_cfg, meta=dict(blob.get("meta") or {}), path=path
    )
