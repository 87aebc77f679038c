"""The TinySoundFont back-end: no system library, no reverb or chorus, no sustain pedal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.audio.renderer import SETTING_NAME, Backend, ChannelSetup, Renderer
from engine.errors import BadSoundfont


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

    def _select_program(self, setup: ChannelSetup) -> None:
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
