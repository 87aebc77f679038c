"""MIDI to stereo audio with a SoundFont: FluidSynth (reverb, chorus), TinySoundFont as fallback.

One synthesizer per worker process, its SoundFont loaded once and reused for every request.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from engine.audio.fluidsynth_renderer import FluidSynthRenderer, pyfluidsynth
from engine.audio.renderer import SETTING_NAME, TAIL_MAX_S, Backend, RenderedAudio, Renderer
from engine.audio.tinysoundfont_renderer import TinySoundFontRenderer
from engine.errors import BadSoundfont

if TYPE_CHECKING:
    import pretty_midi

    from engine.settings import Settings

log = logging.getLogger(__name__)

# --- choosing and caching ------------------------------------------------------------------------

_warned_fallback = False
_renderers: dict[tuple[Backend, str, int], Renderer] = {}
_renderers_lock = threading.Lock()
# A forked worker must build its own synthesizer, never reuse the parent's.
os.register_at_fork(after_in_child=_renderers.clear)


def fluidsynth_available() -> bool:
    return pyfluidsynth() is not None


def _check_soundfont_file(path: Path) -> None:
    if not path.is_file():
        raise BadSoundfont(
            f"{SETTING_NAME} points to {path}, which does not exist or is not a file; "
            "set it to an .sf2/.sf3 SoundFont (empty = the one pretty_midi ships)"
        )
    with path.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise BadSoundfont(
            f"{SETTING_NAME} points to {path}, which is not a SoundFont (.sf2/.sf3) file"
        )


def check_soundfont(settings: Settings) -> None:
    """Fail fast (BadSoundfont naming the setting) without loading a synthesizer: safe to call
    in a parent process before it forks its workers."""
    _check_soundfont_file(settings.soundfont_path)


def renderer_description(settings: Settings) -> str:
    """Which synthesizer and SoundFont this machine renders with, in one line for `motif
    status` and a worker's start line (loads libfluidsynth, creates no synthesizer)."""
    path = settings.soundfont_path
    if fluidsynth_available():
        text = "FluidSynth"
        try:
            import ctypes

            version = pyfluidsynth()._fl.fluid_version_str  # the loaded library's own function
            version.restype = ctypes.c_char_p
            text = f"FluidSynth {version().decode()}"
        except Exception:  # noqa: BLE001 - the version is a nicety
            pass
    else:
        text = "TinySoundFont (fallback: libfluidsynth not found; `motif setup-audio` installs it)"
    return f"{text}, SoundFont {path}"


def get_renderer(settings: Settings, prefer: Backend | None = None) -> Renderer:
    """This process's renderer for the configured SoundFont, loaded on first use.

    FluidSynth unless `prefer="tinysoundfont"` or libfluidsynth is missing (then a warning,
    once). Raises BadSoundfont naming MOTIF_SOUNDFONT when the SoundFont is missing or corrupt."""
    global _warned_fallback
    path = settings.soundfont_path
    _check_soundfont_file(path)
    backend: Backend = "tinysoundfont" if prefer == "tinysoundfont" else "fluidsynth"
    if backend == "fluidsynth" and not fluidsynth_available():
        if not _warned_fallback:
            _warned_fallback = True
            log.warning(
                "libfluidsynth not found: rendering with TinySoundFont (no reverb or chorus); "
                "run `motif setup-audio` (or install libfluidsynth3) for the full sound"
            )
        backend = "tinysoundfont"
    key = (backend, str(path.resolve()), int(settings.sample_rate))
    with _renderers_lock:
        renderer = _renderers.get(key)
        if renderer is None:
            cls = FluidSynthRenderer if backend == "fluidsynth" else TinySoundFontRenderer
            renderer = cls(path, int(settings.sample_rate))
            _renderers[key] = renderer
            log.info("loaded SoundFont %s into %s at %d Hz", path, backend, settings.sample_rate)
    return renderer


def midi_seconds(midi: pretty_midi.PrettyMIDI) -> float:
    """Where the last note ends, in seconds (0 for a MIDI without notes)."""
    return max((n.end for inst in midi.instruments for n in inst.notes), default=0.0)


__all__ = [
    "TAIL_MAX_S",
    "Backend",
    "FluidSynthRenderer",
    "RenderedAudio",
    "Renderer",
    "TinySoundFontRenderer",
    "fluidsynth_available",
    "get_renderer",
    "renderer_description",
    "midi_seconds",
]
