"""`/history`, `/status`, `/help`, `/forget`, `/share-default`: what a member looks up or sets."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.discord_limits import fitted_embed
from bot.requesters import requester_from_interaction

if TYPE_CHECKING:
    from bot.client import MotifBot


class Info(commands.Cog):
    def __init__(self, bot: MotifBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    async def history(self, interaction: discord.Interaction) -> None:
        """Your ten most recent requests."""
        await interaction.response.defer(ephemeral=True, thinking=True)  # before the database
        who = requester_from_interaction(interaction, "slash")
        items = await asyncio.to_thread(self.bot.jobs.history, who)
        await interaction.edit_original_response(embed=fitted_embed(messages.history_embed(items)))

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """The queue, the workers and the active model."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await asyncio.to_thread(self.bot.jobs.queue_status)
        await interaction.edit_original_response(embed=fitted_embed(messages.status_embed(status)))

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to use Motif."""
        await interaction.response.send_message(messages.HELP_TEXT, ephemeral=True)

    @app_commands.command(name="forget")
    async def forget(self, interaction: discord.Interaction) -> None:
        """Withdraw your shared tunes, and what others made from your seeds, from Motif's training"""
        await interaction.response.defer(ephemeral=True, thinking=True)
        who = requester_from_interaction(interaction, "slash")
        count = await asyncio.to_thread(self.bot.jobs.forget, who)
        await interaction.edit_original_response(
            content=f"Done: {count} shared tune{'s' if count != 1 else ''} withdrawn. "
            "Future training runs will not use them."
        )

    @app_commands.command(name="share-default")
    @app_commands.describe(
        enabled="share every seed you upload from now on (you can /forget later)"
    )
    async def share_default(self, interaction: discord.Interaction, enabled: bool) -> None:
        """Opt in (or out) of sharing your future seeds with Motif's training collection."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        who = requester_from_interaction(interaction, "slash")
        await asyncio.to_thread(self.bot.jobs.set_share_by_default, who, enabled)
        text = (
            "From now on, the seeds you upload are shared for training. `/forget` withdraws them."
            if enabled
            else "Your future seeds will not be shared. Already shared tunes stay until `/forget`."
        )
        await interaction.edit_original_response(content=text)


async def setup(bot: MotifBot) -> None:
    await bot.add_cog(Info(bot))
