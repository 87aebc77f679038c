"""A result's media: its audio, piano roll and engraved score, the audio made in a second thread
while this one draws the pictures.

The audio's long calls (the synthesizer, the loudness filter, libvorbis) release the GIL; verovio
and resvg keep it. With a second core free, the audio costs little more than the pictures take
meanwhile; with none, the two take turns and it costs what one after the other did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.audio.encode import EncodedAudio, audio_of, read_midi
from engine.audio.pianoroll import piano_roll_png
from engine.audio.score import EngravedResult, engrave_result
from engine.music.result_midi import split_result

if TYPE_CHECKING:
    import pretty_midi

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
    engrave_s: float  # MusicXML, score pages and PDF (in this thread)
    audio_s: float  # synthesis, loudness and encoding (in the audio thread, GIL waits included)


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

    A MIDI that cannot be read raises BadMidi before anything starts. `step` is called in this
    thread inside the engraving (engine.audio.score.engrave_score) and must not raise; `between`
    is called between the stages and may raise to stop: the audio thread is then left to finish
    on its own (it holds no claim and writes nothing) and its result is dropped."""
    step, between = step or _no_step, between or _no_step
    parsed = read_midi(midi)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="motif-audio")
    try:
        audio_started = time.perf_counter()
        audio = pool.submit(_timed_audio, parsed, settings, program, audio_started)
        between()
        seed, cont = split_result(midi)
        roll = piano_roll_png(seed, cont, title=roll_title)
        between()
        engraving_started = time.perf_counter()
        score = engrave_result(midi, seed, cont, title=score_title, step=step)
        engrave_s = time.perf_counter() - engraving_started
        between()
        encoded, audio_s = audio.result()
        between()
    finally:
        # done: the thread has ended; stopped early: it ends on its own, nobody waits for it
        pool.shutdown(wait=False, cancel_futures=True)
    return ResultMedia(encoded, roll, score, engrave_s, audio_s)


def _timed_audio(
    parsed: pretty_midi.PrettyMIDI, settings: Settings, program: int | None, started: float
) -> tuple[EncodedAudio, float]:
    encoded = audio_of(parsed, settings, program)
    return encoded, time.perf_counter() - started
