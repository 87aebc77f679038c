"""Seed attachments: the checks Discord's metadata allows before downloading, then the download.

The bytes are read at command time because attachment URLs are signed and expire; the engine
(`JobService.compose` → `load_seed`, or `load_notation_seed` for ABC and MusicXML) then checks
that they really are a usable seed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import discord

from bot.messages import quoted
from engine.errors import BadMidi, MotifError
from engine.music.midi_check import SeedLimits
from engine.music.notation import NOTATION_SUFFIXES, abc_from_chat
from engine.music.parsers import ParserBusy

log = logging.getLogger(__name__)

T = TypeVar("T")

MIDI_SUFFIXES = (".mid", ".midi")
SEED_SUFFIXES = MIDI_SUFFIXES + NOTATION_SUFFIXES
SEED_LIMIT_BYTES = SeedLimits().max_bytes
MAX_PASTED_ABC_CHARS = 6000  # Discord's longest text option; a message is shorter still


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def is_seed_name(filename: str) -> bool:
    """MIDI (.mid, .midi), ABC (.abc) or MusicXML (.musicxml, .xml, .mxl), by the name."""
    return filename.lower().endswith(SEED_SUFFIXES)


def find_seed_attachment(attachments: list[discord.Attachment]) -> discord.Attachment | None:
    return next((a for a in attachments if is_seed_name(a.filename)), None)


def check_seed_attachment(attachment: discord.Attachment, limit: int = SEED_LIMIT_BYTES) -> None:
    """Refuse by name and size before anything is downloaded (and before the reply is deferred)."""
    if not is_seed_name(attachment.filename):
        raise BadMidi(
            f"{quoted(attachment.filename)} is not a seed Motif can read: attach a MIDI (.mid, "
            ".midi), ABC (.abc) or MusicXML (.musicxml, .mxl) file."
        )
    if attachment.size > limit:
        raise BadMidi(
            f"{quoted(attachment.filename)} is too large ({_mib(attachment.size)}): "
            f"the limit for a seed is {_mib(limit)}."
        )


async def read_seed(attachment: discord.Attachment, limit: int = SEED_LIMIT_BYTES) -> bytes:
    check_seed_attachment(attachment, limit)
    try:
        data = await attachment.read()
    except discord.HTTPException as exc:
        log.warning("could not download attachment %s: %s", attachment.id, exc)
        raise MotifError(
            f"Discord would not give me {quoted(attachment.filename)} (the link may have expired); "
            "attach it again."
        ) from exc
    if len(data) > limit:  # the metadata said otherwise: trust the bytes
        raise BadMidi(
            f"{quoted(attachment.filename)} is too large ({_mib(len(data))}): "
            f"the limit for a seed is {_mib(limit)}."
        )
    return data


def check_pasted_abc(text: str) -> None:
    """The length of pasted ABC, checked before deferring (the refusal stays ephemeral)."""
    if len(text) > MAX_PASTED_ABC_CHARS:
        raise BadMidi(f"That ABC is too long: the limit is {MAX_PASTED_ABC_CHARS:,} characters.")


def pasted_abc(text: str) -> bytes:
    """ABC text from a command option or a code block, as seed bytes (named `PASTED_NAME`).
    Call it off the event loop: it runs regular expressions over up to 6,000 characters."""
    check_pasted_abc(text)
    return abc_from_chat(text).encode("utf-8")


class SeedThreads:
    """The threads that submit requests with a seed: a parse may wait its turn in the parsers'
    fair queue, and that wait must not hold the event loop's default executor (which answers
    `/history`, progress and every other command). When all are taken, the answer is "busy"."""

    def __init__(self, threads: int = 16) -> None:
        self.threads = threads
        self.in_flight = 0
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="motif-seed")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self.in_flight >= self.threads:
            raise ParserBusy(
                "Motif is busy reading other seeds right now; try again in a minute.",
                retry_after_s=30,
            )
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, partial(fn, *args))
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
