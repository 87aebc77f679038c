"""A result's media: its audio, piano roll and engraved score, one after the other.

Not in two threads: the audio's calls (the synthesizer, the loudness filter, libvorbis) release
the GIL, but verovio, resvg and the PDF's Python keep it, so the audio thread waits for the GIL
after each of its hundreds of short calls. Measured here, the 256-bar stage took 3.77-4.18 s
in two threads against 3.05-3.49 s one after the other (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.audio.encode import EncodedAudio, audio_of, read_midi
from engine.audio.pianoroll import piano_roll_png
from engine.audio.score import EngravedResult, engrave_result
from engine.music.result_midi import split_result

if TYPE_CHECKING:
    from engine.settings import Settings

log = logging.getLogger(__name__)

Step = Callable[[], None]


def _no_step() -> None:
    pass


@dataclass(frozen=True)
class ResultMedia:
    audio: EncodedAudio
    piano_roll: bytes  # PNG
    score: EngravedResult
    engrave_s: float  # MusicXML, score pages and PDF
    audio_s: float  # synthesis, loudness and encoding


def render_media(
    midi: bytes,
    settings: Settings,
    *,
    program: int | None,
    roll_title: str,
    score_title: str,
    step: Step | None = None,
    between: Step | None = None,
) -> ResultMedia:
    """The audio (in `settings`' format, `program` overriding the melodic instruments), the
    piano roll and the score of a result MIDI.

    A MIDI that cannot be read raises BadMidi before anything else runs. `step` is called inside
    the engraving (engine.audio.score.engrave_score) and must not raise; `between` is called
    between the stages and may raise to stop."""
    step, between = step or _no_step, between or _no_step
    parsed = read_midi(midi)
    audio_started = time.perf_counter()
    audio = audio_of(parsed, settings, program)
    audio_s = time.perf_counter() - audio_started
    between()
    seed, cont = split_result(midi)
    roll = piano_roll_png(seed, cont, title=roll_title)
    between()
    engraving_started = time.perf_counter()
    score = engrave_result(midi, seed, cont, title=score_title, step=step)
    engrave_s = time.perf_counter() - engraving_started
    between()
    return ResultMedia(audio, roll, score, engrave_s, audio_s)
