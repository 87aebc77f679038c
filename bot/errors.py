"""The one place errors become replies: domain errors as ephemeral messages, bugs as an apology.

`MotifError.user_message` is written for the person who caused it; anything else is a bug, logged
with an error id (and the request id when there is one) that the apology repeats.
"""

from __future__ import annotations

import contextlib
import logging
import secrets

import discord
from discord import app_commands

from bot.discord_limits import CONTENT_CHARS, clipped
from bot.messages import retry_hint
from engine.errors import MotifError, RateLimited, public_message

log = logging.getLogger(__name__)


def user_text(error: MotifError) -> str:
    if error.for_operator:
        log.error("operator error shown to a user as a generic message: %s", error.detail)
    text = public_message(error)
    if isinstance(error, RateLimited):
        text = f"{text} {retry_hint(error.retry_after_s)}"
    return text


def new_error_id() -> str:
    return secrets.token_hex(4)


def apology(error_id: str, request_id: int | None = None) -> str:
    about = f", request #{request_id}" if request_id else ""
    return (
        f"Sorry, something went wrong on Motif's side (error id `{error_id}`{about}). "
        "It has been logged; please quote the id if you report it."
    )


def unwrap(error: BaseException) -> BaseException:
    if isinstance(error, app_commands.CommandInvokeError):
        return error.original
    if isinstance(error, app_commands.TransformerError) and isinstance(error.__cause__, MotifError):
        return error.__cause__
    return error


def reply_text(interaction: discord.Interaction, error: BaseException) -> str:
    """The text for the user; logs anything that is not a domain error."""
    original = unwrap(error)
    if isinstance(original, MotifError):
        return user_text(original)
    if isinstance(original, app_commands.TransformerError):
        return f"I could not understand `{original.value}` for that option."
    if isinstance(original, app_commands.CommandNotFound):
        return "That command is not available here."
    if isinstance(original, app_commands.CheckFailure):
        return str(original) or "You cannot use this command here."
    error_id = new_error_id()
    request_id = interaction.extras.get("request_id") if interaction.extras else None
    command = getattr(interaction.command, "qualified_name", None) or interaction.data
    log.error(
        "unexpected error %s (request %s) in %s by user %s",
        error_id,
        request_id,
        command,
        interaction.user.id if interaction.user else None,
        exc_info=original,
    )
    return apology(error_id, request_id)


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    text = clipped(text, CONTENT_CHARS)
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True)
            return
        if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
            # A public "thinking…" placeholder would otherwise stay (or take the error public).
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        await interaction.followup.send(text, ephemeral=True)
    except discord.HTTPException:
        log.warning("could not send an error message to the user", exc_info=True)


async def answer_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Used by the command tree's `on_error` and by every button callback."""
    await send_ephemeral(interaction, reply_text(interaction, error))


async def guarded(interaction: discord.Interaction, coro) -> None:
    """Run a component callback; its errors are answered like command errors."""
    try:
        await coro
    except Exception as exc:  # noqa: BLE001 - every failure gets an answer
        await answer_error(interaction, exc)
