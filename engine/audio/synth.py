"""MIDI to stereo audio with a SoundFont: FluidSynth (reverb, chorus), TinySoundFont as fallback.

One synthesizer per worker process, its SoundFont loaded once and reused for every request.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from engine.errors import BadMidi, BadSoundfont

if TYPE_CHECKING:
    import pretty_midi

    from engine.settings import Settings

log = logging.getLogger(__name__)

SETTING_NAME = "MOTIF_SOUNDFONT"
TAIL_MAX_S = 1.5  # release and reverb kept after the last note-off, at most
TAIL_FLOOR_DB = -60.0  # the tail stops once a block is this far below the render's peak
TAIL_BLOCK_S = 0.05
MIN_NOTE_S = 0.01  # zero-length notes still sound (and their note-off never precedes the note-on)
DRUM_CHANNEL = 9
N_CHANNELS = 64
DRUM_BANK = 128
# Bank select is ours to decide (programs are chosen per instrument, or per request).
IGNORED_CCS = frozenset({0, 32})

Backend = Literal["fluidsynth", "tinysoundfont"]


@dataclass(frozen=True, slots=True)
class RenderedAudio:
    samples: np.ndarray  # (n, 2) float32, stereo
    sample_rate: int
    shortened: bool  # the MIDI was longer than max_seconds and was cut

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


# --- the performance: what to play, on which channel, at which sample ----------------------------

_CC, _OFF, _ON, _BEND = 0, 1, 2, 3
# At one instant: controllers first (volume, pedal), then note-offs, then note-ons, so that a
# repeated pitch is re-struck rather than cut.
_ORDER = {_CC: 0, _BEND: 0, _OFF: 1, _ON: 2}


@dataclass(frozen=True, slots=True)
class _ChannelSetup:
    channel: int
    bank: int
    preset: int
    drum: bool


@dataclass(frozen=True, slots=True)
class _Performance:
    channels: tuple[_ChannelSetup, ...]
    events: list[tuple[int, int, int, int, int, int]]  # (sample, order, kind, channel, a, b)
    music_samples: int  # up to the last note-off, or the cut
    shortened: bool


def _plan(
    midi: pretty_midi.PrettyMIDI, *, program: int | None, max_seconds: float, rate: int
) -> _Performance:
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if program is not None and not 0 <= program <= 127:
        raise ValueError(f"program must be a General MIDI program 0..127, got {program}")
    playing = [inst for inst in midi.instruments if inst.notes]
    if not playing:
        raise BadMidi("nothing to render: the MIDI has no notes")

    end_s = max(max(n.end, n.start + MIN_NOTE_S) for inst in playing for n in inst.notes)
    shortened = end_s > max_seconds
    cut_s = min(end_s, max_seconds)
    cut = int(round(cut_s * rate))

    melodic_pool = [c for c in range(N_CHANNELS) if c % 16 != DRUM_CHANNEL]
    drum_pool = [DRUM_CHANNEL] + [c for c in range(N_CHANNELS) if c % 16 == DRUM_CHANNEL][1:]
    free_melodic, free_drum = iter(melodic_pool), iter(drum_pool)
    setups: dict[int, _ChannelSetup] = {}
    by_sound: dict[tuple[bool, int], int] = {}
    events: list[tuple[int, int, int, int, int, int]] = []

    for inst in playing:
        drum = bool(inst.is_drum)
        preset = inst.program if drum or program is None else program
        sound = (drum, preset)
        # One channel per instrument while channels last; then instruments share by sound.
        chan = next(free_drum if drum else free_melodic, None)
        if chan is None:
            pool = drum_pool if drum else melodic_pool
            chan = by_sound.get(sound, pool[len(setups) % len(pool)])
        by_sound.setdefault(sound, chan)
        setups[chan] = _ChannelSetup(chan, DRUM_BANK if drum else 0, preset, drum)

        for note in inst.notes:
            on = int(round(note.start * rate))
            if on >= cut or note.start < 0:
                continue
            off = int(round(max(note.end, note.start + MIN_NOTE_S) * rate))
            velocity = min(127, max(1, int(note.velocity)))
            events.append((on, _ORDER[_ON], _ON, chan, int(note.pitch), velocity))
            events.append((min(off, cut), _ORDER[_OFF], _OFF, chan, int(note.pitch), 0))
        for cc in inst.control_changes:
            at = int(round(cc.time * rate))
            if at < cut and cc.number not in IGNORED_CCS:
                events.append((max(at, 0), 0, _CC, chan, int(cc.number), int(cc.value)))
        for bend in inst.pitch_bends:
            at = int(round(bend.time * rate))
            if at < cut:
                events.append((max(at, 0), 0, _BEND, chan, int(bend.pitch), 0))

    events.sort()
    return _Performance(tuple(setups.values()), events, cut, shortened)


# --- renderers -----------------------------------------------------------------------------------


class Renderer(ABC):
    """A loaded SoundFont that turns MIDI into stereo float32 audio. Not shared across threads
    without its lock; every render starts from a clean synthesizer."""

    backend: Backend

    def __init__(self, soundfont_path: Path, sample_rate: int) -> None:
        self.soundfont_path = soundfont_path
        self.sample_rate = sample_rate
        self._lock = threading.Lock()

    def render(
        self, midi: pretty_midi.PrettyMIDI, *, program: int | None, max_seconds: float
    ) -> RenderedAudio:
        """Render `midi` (all its instruments; `program` overrides the melodic ones' GM program).

        At most `max_seconds` of music, then the release tail (at most TAIL_MAX_S)."""
        rate = self.sample_rate
        plan = _plan(midi, program=program, max_seconds=max_seconds, rate=rate)
        tail_max = int(TAIL_MAX_S * rate)
        out = np.zeros((plan.music_samples + tail_max, 2), np.float32)  # (n, 2)
        with self._lock:
            self._reset()
            for setup in plan.channels:
                self._select_program(setup)
            pos = 0
            for at, _order, kind, chan, a, b in plan.events:
                if at > pos:
                    self._write(out, pos, at - pos)
                    pos = at
                if kind == _ON:
                    self._note_on(chan, a, b)
                elif kind == _OFF:
                    self._note_off(chan, a)
                elif kind == _CC:
                    self._control_change(chan, a, b)
                else:
                    self._pitch_bend(chan, a)
            if plan.music_samples > pos:
                self._write(out, pos, plan.music_samples - pos)
            pos = plan.music_samples

            # Release everything (pedals too) and keep the tail until it fades out.
            for setup in plan.channels:
                self._control_change(setup.channel, 64, 0)
                self._control_change(setup.channel, 66, 0)
                self._control_change(setup.channel, 123, 0)
            peak = float(np.abs(out[:pos]).max()) if pos else 0.0
            floor = max(peak * 10 ** (TAIL_FLOOR_DB / 20), 1e-7)
            block = max(1, int(TAIL_BLOCK_S * rate))
            while pos < out.shape[0]:
                n = min(block, out.shape[0] - pos)
                self._write(out, pos, n)
                pos += n
                if float(np.abs(out[pos - n : pos]).max()) < floor:
                    break
        return RenderedAudio(out[:pos], rate, plan.shortened)

    @abstractmethod
    def _reset(self) -> None:
        """Silence every voice and effect; controllers back to their defaults."""

    @abstractmethod
    def _select_program(self, setup: _ChannelSetup) -> None: ...

    @abstractmethod
    def _note_on(self, chan: int, pitch: int, velocity: int) -> None: ...

    @abstractmethod
    def _note_off(self, chan: int, pitch: int) -> None: ...

    @abstractmethod
    def _control_change(self, chan: int, number: int, value: int) -> None: ...

    @abstractmethod
    def _pitch_bend(self, chan: int, value: int) -> None:
        """`value` in -8192..8191, 0 = no bend."""

    @abstractmethod
    def _write(self, out: np.ndarray, start: int, n: int) -> None:
        """Synthesize `n` frames into out[start:start + n] (out is (N, 2) float32, C-contiguous)."""


class FluidSynthRenderer(Renderer):
    """libfluidsynth through pyfluidsynth, float output written straight into the result array."""

    backend: Backend = "fluidsynth"

    def __init__(self, soundfont_path: Path, sample_rate: int) -> None:
        super().__init__(soundfont_path, sample_rate)
        fs = _pyfluidsynth()
        if fs is None:
            raise RuntimeError("libfluidsynth is not available")
        self._fs = fs
        # We hold our own lock, so FluidSynth's API lock is overhead.
        self._synth = fs.Synth(
            samplerate=float(sample_rate),
            channels=N_CHANNELS,
            **{
                "synth.reverb.active": 1,
                "synth.chorus.active": 1,
                "synth.threadsafe-api": 0,
            },
        )
        self._sfid = self._synth.sfload(str(soundfont_path))
        if self._sfid < 0:
            self._synth.delete()
            raise BadSoundfont(
                f"{SETTING_NAME} points to {soundfont_path}, which FluidSynth cannot load "
                "(corrupt or not a SoundFont)"
            )
        # pyfluidsynth's get_samples gives int16; float keeps headroom for loudness later.
        c_int, c_void_p = ctypes.c_int, ctypes.c_void_p
        self._write_float = fs.cfunc(
            "fluid_synth_write_float",
            c_int,
            ("synth", c_void_p, 1),
            ("len", c_int, 1),
            ("lbuf", c_void_p, 1),
            ("loff", c_int, 1),
            ("lincr", c_int, 1),
            ("rbuf", c_void_p, 1),
            ("roff", c_int, 1),
            ("rincr", c_int, 1),
        )
        self._default_cc = {n: self._synth.get_cc(0, n) for n in (7, 10, 91, 93)}
        self._scratch = np.zeros((int(0.1 * sample_rate), 2), np.float32)

    def _reset(self) -> None:
        synth = self._synth
        for chan in range(N_CHANNELS):
            synth.all_sounds_off(chan)
            synth.cc(chan, 121, 0)  # reset controllers (pedals, expression, bend, modulation)
            synth.pitch_bend(chan, 0)
            for number, value in self._default_cc.items():
                synth.cc(chan, number, value)
        # Let the reverb and chorus lines of the previous render die out (bounded: 3 s at most).
        scratch = self._scratch
        for _ in range(30):
            self._write(scratch, 0, scratch.shape[0])
            if float(np.abs(scratch).max()) < 1e-6:
                break

    def _select_program(self, setup: _ChannelSetup) -> None:
        # A GM set may lack a program or a drum kit: then the bank's first one, then piano.
        candidates = ((setup.bank, setup.preset), (setup.bank, 0), (0, setup.preset), (0, 0))
        bank, preset = next(
            (c for c in candidates if self._synth.sfpreset_name(self._sfid, *c) is not None),
            (0, 0),
        )
        self._synth.program_select(setup.channel, self._sfid, bank, preset)

    def _note_on(self, chan: int, pitch: int, velocity: int) -> None:
        self._synth.noteon(chan, pitch, velocity)

    def _note_off(self, chan: int, pitch: int) -> None:
        self._synth.noteoff(chan, pitch)

    def _control_change(self, chan: int, number: int, value: int) -> None:
        self._synth.cc(chan, number, value)

    def _pitch_bend(self, chan: int, value: int) -> None:
        self._synth.pitch_bend(chan, value)

    def _write(self, out: np.ndarray, start: int, n: int) -> None:
        base = out.ctypes.data
        # Interleaved stereo: left at even floats, right at odd, stride 2.
        self._write_float(self._synth.synth, n, base, 2 * start, 2, base, 2 * start + 1, 2)


class TinySoundFontRenderer(Renderer):
    """TinySoundFont: no system library, no reverb or chorus, no sustain pedal."""

    backend: Backend = "tinysoundfont"

    def __init__(self, soundfont_path: Path, sample_rate: int) -> None:
        super().__init__(soundfont_path, sample_rate)
        import tinysoundfont

        self._synth = tinysoundfont.Synth(samplerate=sample_rate)
        try:
            self._sfid = self._synth.sfload(str(soundfont_path))
        except (RuntimeError, OSError) as exc:
            raise BadSoundfont(
                f"{SETTING_NAME} points to {soundfont_path}, which TinySoundFont cannot load "
                f"(corrupt or not a SoundFont): {exc}"
            ) from exc
        self._sf = self._synth.soundfonts[self._sfid]
        self._scratch = np.zeros((int(0.05 * sample_rate), 2), np.float32)

    def _reset(self) -> None:
        self._sf.reset()  # every channel reset; voices get a quick (few ms) release
        self._write(self._scratch, 0, self._scratch.shape[0])  # which we play out and drop

    def _select_program(self, setup: _ChannelSetup) -> None:
        candidates = ((setup.bank, setup.preset), (setup.bank, 0), (0, setup.preset), (0, 0))
        bank, preset = next(
            (c for c in candidates if self._synth.sfpreset_name(self._sfid, *c) is not None),
            (0, 0),
        )
        self._synth.program_select(setup.channel, self._sfid, bank, preset, is_drums=setup.drum)

    def _note_on(self, chan: int, pitch: int, velocity: int) -> None:
        self._sf.channel_note_on(chan, pitch, velocity / 127.0)

    def _note_off(self, chan: int, pitch: int) -> None:
        self._sf.channel_note_off(chan, pitch)

    def _control_change(self, chan: int, number: int, value: int) -> None:
        self._sf.channel_midi_control(chan, number, value)

    def _pitch_bend(self, chan: int, value: int) -> None:
        self._sf.channel_set_pitch_wheel(chan, min(16383, max(0, value + 8192)))

    def _write(self, out: np.ndarray, start: int, n: int) -> None:
        self._sf.render(memoryview(out[start : start + n]).cast("B"), False)


# --- choosing and caching ------------------------------------------------------------------------

_pyfluidsynth_module: object | None = None
_pyfluidsynth_tried = False
_warned_fallback = False
_renderers: dict[tuple[Backend, str, int], Renderer] = {}
_renderers_lock = threading.Lock()
# A forked worker must build its own synthesizer, never reuse the parent's.
os.register_at_fork(after_in_child=_renderers.clear)


def _pyfluidsynth():
    """The pyfluidsynth module, or None when libfluidsynth cannot be loaded."""
    global _pyfluidsynth_module, _pyfluidsynth_tried
    if not _pyfluidsynth_tried:
        _pyfluidsynth_tried = True
        try:
            import fluidsynth
        except (ImportError, OSError) as exc:
            log.debug("pyfluidsynth unavailable: %s", exc)
        else:
            _pyfluidsynth_module = fluidsynth
    return _pyfluidsynth_module


def fluidsynth_available() -> bool:
    return _pyfluidsynth() is not None


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

            version = _pyfluidsynth()._fl.fluid_version_str  # the loaded library's own function
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
    "FluidSynthRenderer",
    "RenderedAudio",
    "Renderer",
    "TinySoundFontRenderer",
    "fluidsynth_available",
    "get_renderer",
    "renderer_description",
    "midi_seconds",
]
