"""Seed attachments: the checks Discord's metadata allows before downloading, then the download.

The bytes are read at command time because attachment URLs are signed and expire; the engine
(`JobService.compose` → `load_seed`) then checks that they really are a usable MIDI file.
"""

from __future__ import annotations

import logging

import discord

from bot.messages import quoted
from engine.errors import BadMidi, MotifError
from engine.midi_io import SeedLimits

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi")
SEED_LIMIT_BYTES = SeedLimits().max_bytes


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB"


def is_midi_name(filename: str) -> bool:
    return filename.lower().endswith(MIDI_SUFFIXES)


def find_midi_attachment(attachments: list[discord.Attachment]) -> discord.Attachment | None:
    return next((a for a in attachments if is_midi_name(a.filename)), None)


def check_seed_attachment(attachment: discord.Attachment, limit: int = SEED_LIMIT_BYTES) -> None:
    """Refuse by name and size before anything is downloaded (and before the reply is deferred)."""
    if not is_midi_name(attachment.filename):
        raise BadMidi(
            f"{quoted(attachment.filename)} is not a MIDI file: attach a .mid or .midi file "
            "(export one from your notation program or DAW)."
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
