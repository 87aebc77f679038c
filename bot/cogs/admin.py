"""Admin commands: `/retrain`, `/model list|activate|rollback`, `/stats`, and the owners' `sync`.

Who counts as an admin is decided by `engine.service.admin.is_admin` from settings (ids, and Manage Server
or admin roles in the home guild only); `bot.checks.admin_only` writes every attempt to the audit
log. The slash commands live in the home guild only (`setup`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot import messages
from bot.checks import admin_only, admin_rights
from bot.discord_limits import CHOICES, clipped, fitted_content, fitted_embed
from engine.service import admin

if TYPE_CHECKING:
    from bot.client import MotifBot

log = logging.getLogger(__name__)


class Admin(commands.Cog):
    model = app_commands.Group(
        name="model",
        description="Model versions (admins only)",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: MotifBot) -> None:
        self.bot = bot

    @app_commands.command(name="retrain")
    @admin_only()
    @app_commands.describe(
        epochs="Passes over the training data (1 to 100)",
        from_scratch="Start from random weights instead of the active model",
        collected_share="Share of training examples from tunes users shared (0 to 1)",
        cancel="A training run's number: cancel that run instead of starting one",
    )
    async def retrain(
        self,
        interaction: discord.Interaction,
        epochs: app_commands.Range[int, 1, 100] = 2,
        from_scratch: bool = False,
        collected_share: app_commands.Range[float, 0.0, 1.0] = 0.5,
        cancel: app_commands.Range[int, 1] | None = None,
    ) -> None:
        """Train a new candidate model, or cancel a run (admins only); progress is reported here."""
        if cancel is not None:
            outcome = await asyncio.to_thread(admin.cancel_run, cancel, self.bot.settings)
            text = admin.cancel_run_text(cancel, outcome)
            await interaction.edit_original_response(content=fitted_content(text))
            return
        options = admin.RetrainOptions(
            epochs=epochs, from_scratch=from_scratch, collected_share=collected_share
        )
        run_id = await asyncio.to_thread(
            functools.partial(
                admin.request_retrain,
                options,
                requested_by=interaction.user.id,
                channel_id=interaction.channel_id,
                settings=self.bot.settings,
            )
        )
        await interaction.edit_original_response(content=f"🏋️ Training run #{run_id} is queued…")
        self.bot.deliveries.follow_run(
            run_id,
            self.bot.deliveries.for_interaction(interaction, ephemeral=True),
            functools.partial(admin.run_info, settings=self.bot.settings),
            self.bot.jobs.store.get,
        )

    @model.command(name="list")
    @admin_only()
    async def model_list(self, interaction: discord.Interaction) -> None:
        """Recent model versions and which one is active."""
        models = await asyncio.to_thread(admin.list_models, self.bot.settings)
        await interaction.edit_original_response(embed=fitted_embed(messages.models_embed(models)))

    @model.command(name="activate")
    @admin_only()
    @app_commands.describe(version="The model version to make active")
    async def model_activate(self, interaction: discord.Interaction, version: str) -> None:
        """Make a model version the active one; workers switch at their next job."""
        active = await asyncio.to_thread(admin.activate_model, version, self.bot.settings)
        await interaction.edit_original_response(
            content=fitted_content(f"✅ `{active}` is now active.")
        )

    @model_activate.autocomplete("version")
    async def _versions(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        if not admin_rights(interaction):
            return []  # the list of versions is for admins too
        models = await asyncio.to_thread(admin.list_models, self.bot.settings)
        return [  # a choice's name and value: 1-100 characters
            app_commands.Choice(name=clipped(f"{m.version} ({m.status})", 100), value=m.version)
            for m in models
            if current.lower() in m.version.lower() and len(m.version) <= 100
        ][:CHOICES]

    @model.command(name="rollback")
    @admin_only()
    async def model_rollback(self, interaction: discord.Interaction) -> None:
        """Go back to the model that was active before the current one."""
        active = await asyncio.to_thread(admin.rollback, self.bot.settings)
        await interaction.edit_original_response(
            content=fitted_content(f"↩️ Rolled back: `{active}` is active again.")
        )

    @app_commands.command(name="stats")
    @admin_only()
    async def stats(self, interaction: discord.Interaction) -> None:
        """Usage, feedback and timing statistics (admins only)."""
        result = await asyncio.to_thread(admin.stats, self.bot.settings)
        await interaction.edit_original_response(embed=fitted_embed(messages.stats_embed(result)))

    @commands.command(name="sync", hidden=True)
    async def sync(
        self, ctx: commands.Context, scope: Literal["guild", "global"] = "guild"
    ) -> None:
        """`@Motif sync [guild|global]`: publish the slash commands (owners only)."""
        allowed = ctx.author.id in self.bot.settings.owners
        await asyncio.to_thread(
            admin.audit, self.bot.settings, ctx.author.id, f"sync {scope}", allowed
        )
        if not allowed:
            await ctx.reply("Only the bot's owners can sync commands.", mention_author=False)
            return
        if scope == "global":
            count = await self.bot.sync_commands(None)
            where = "globally (it can take up to an hour to show everywhere)"
        else:
            guild = ctx.guild or (
                discord.Object(self.bot.settings.dev_guild_id)
                if self.bot.settings.dev_guild_id
                else None
            )
            if guild is None:
                await ctx.reply("No guild here and no dev guild configured.", mention_author=False)
                return
            count = await self.bot.sync_commands(guild)
            where = f"to guild {guild.id}"
        await ctx.reply(f"Synced {count} commands {where}.", mention_author=False)


async def setup(bot: MotifBot) -> None:
    home = bot.settings.home_guild_id
    if home is None:
        # Without a home guild only the listed ids pass the check; the commands stay global.
        await bot.add_cog(Admin(bot))
    else:
        await bot.add_cog(Admin(bot), guild=discord.Object(home))
