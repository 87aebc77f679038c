"""`/history`, `/status`, `/help` and `/forget`: what a member can look up or take back."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.requesters import requester_from_interaction

if TYPE_CHECKING:
    from bot.client import MotifBot


class Info(commands.Cog):
    def __init__(self, bot: MotifBot) -> None:
        self.bot = bot

    @app_commands.command(name="history")
    async def history(self, interaction: discord.Interaction) -> None:
        """Your ten most recent requests."""
        who = requester_from_interaction(interaction, "slash")
        items = await asyncio.to_thread(self.bot.jobs.history, who)
        await interaction.response.send_message(embed=messages.history_embed(items), ephemeral=True)

    @app_commands.command(name="status")
    async def status(self, interaction: discord.Interaction) -> None:
        """The queue, the workers and the active model."""
        status = await asyncio.to_thread(self.bot.jobs.queue_status)
        await interaction.response.send_message(embed=messages.status_embed(status), ephemeral=True)

    @app_commands.command(name="help")
    async def help(self, interaction: discord.Interaction) -> None:
        """How to use Motif."""
        await interaction.response.send_message(messages.HELP_TEXT, ephemeral=True)

    @app_commands.command(name="forget")
    async def forget(self, interaction: discord.Interaction) -> None:
        """Withdraw every tune you shared from Motif's training collection."""
        who = requester_from_interaction(interaction, "slash")
        count = await asyncio.to_thread(self.bot.jobs.forget, who)
        await interaction.response.send_message(
            f"Done: {count} shared tune{'s' if count != 1 else ''} withdrawn. "
            "Future training runs will not use them.",
            ephemeral=True,
        )


async def setup(bot: MotifBot) -> None:
    await bot.add_cog(Info(bot))
