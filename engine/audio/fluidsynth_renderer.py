"""The FluidSynth back-end: libfluidsynth through pyfluidsynth, with reverb and chorus."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from engine.audio.renderer import N_CHANNELS, SETTING_NAME, Backend, ChannelSetup, Renderer
from engine.errors import BadSoundfont

log = logging.getLogger(__name__)

_pyfluidsynth_module: object | None = None
_pyfluidsynth_tried = False


def pyfluidsynth():
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


class FluidSynthRenderer(Renderer):
    """libfluidsynth through pyfluidsynth, float output written straight into the result array."""

    backend: Backend = "fluidsynth"

    def __init__(self, soundfont_path: Path, sample_rate: int) -> None:
        super().__init__(soundfont_path, sample_rate)
        fs = pyfluidsynth()
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

    def _select_program(self, setup: ChannelSetup) -> None:
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
