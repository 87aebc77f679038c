"""The model in a worker's memory: the active version, loaded once per process and swapped when
another version becomes active (noticed at the next job)."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

from engine.model.checkpoint import LoadedModel, load_checkpoint, pick_device
from engine.settings import Settings
from engine.store.artifacts import store_for
from engine.store.models import checkpoint_key, ensure_default_model

log = logging.getLogger(__name__)

_lock = threading.Lock()
_version: str | None = None
_model: LoadedModel | None = None


def load_version(settings: Settings, version: str) -> LoadedModel:
    store = store_for(settings.artifact_root)
    key = checkpoint_key(settings, version)
    local = store.local_path(key)
    device = pick_device(settings.device)
    if local is not None:
        return load_checkpoint(local, device=device)
    with tempfile.NamedTemporaryFile(suffix=".pt") as fh:
        fh.write(store.get(key))
        fh.flush()
        return load_checkpoint(Path(fh.name), device=device)


def get_model(settings: Settings) -> tuple[str, LoadedModel]:
    """(version, LoadedModel) for the active version, loading it once per process."""
    global _version, _model
    version = ensure_default_model(settings)
    with _lock:
        if _model is None or _version != version:
            log.info("loading model %s", version)
            _model = load_version(settings, version)
            _version = version
        return version, _model
