"""The synthesizer's common part: what a render plays (channels, events at sample times, the
cut) and `Renderer`, the base of the FluidSynth and TinySoundFont back-ends."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from engine.errors import BadMidi

if TYPE_CHECKING:
    import pretty_midi

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
class ChannelSetup:
    channel: int
    bank: int
    preset: int
    drum: bool


@dataclass(frozen=True, slots=True)
class _Performance:
    channels: tuple[ChannelSetup, ...]
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
    setups: dict[int, ChannelSetup] = {}
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
        setups[chan] = ChannelSetup(chan, DRUM_BANK if drum else 0, preset, drum)

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


# --- the renderer ----------------------------------------------------------------------------------


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
    def _select_program(self, setup: ChannelSetup) -> None: ...

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
