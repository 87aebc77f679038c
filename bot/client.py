"""The bot object: settings and the job service go in, cogs and persistent buttons are set up in
`setup_hook`, and one command tree answers every error.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import answer_error
from bot.invite import invite_url
from bot.posting import Deliveries
from bot.seeds import SeedThreads
from bot.views import RESULT_BUTTONS
from engine.service.notify import RequestWakeups
from engine.service.requests import JobService
from engine.settings import Settings

log = logging.getLogger(__name__)

EXTENSIONS = ("bot.cogs.compose", "bot.cogs.admin", "bot.cogs.info")
INTENTS = discord.Intents(guilds=True, guild_messages=True, dm_messages=True)
POLL_SQLITE_S = 0.2  # no notification channel: SQL polled this often per followed request
POLL_WITH_WAKEUPS_S = 2.0  # woken by Redis / Postgres; the poll only covers a lost wake-up


class MotifTree(app_commands.CommandTree):
    async def on_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await answer_error(interaction, error)


class MotifBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        jobs: JobService | None = None,
        *,
        sync_on_start: bool = True,
        poll_interval_s: float | None = None,
        sweep_interval_s: float = 30.0,
        token_ttl_s: float = 14 * 60,
        **options,
    ) -> None:
        # Only what is used: guilds (channels for late results), and messages in guilds and DMs
        # for "@Motif + a MIDI file" (a mention carries its attachments without MESSAGE_CONTENT).
        # Nobody is pinged unless a message says so (ChannelDestination names the requester).
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=INTENTS,
            tree_cls=MotifTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.jobs = jobs or JobService(settings)
        self.sync_on_start = sync_on_start
        self._said_ready = False
        # Woken by the workers over Redis / Postgres where deployed: then the SQL poll is only
        # the fallback. SQLite polls often instead (one indexed read; docs/benchmarks.md).
        wakeups = RequestWakeups(settings)
        if poll_interval_s is None:
            poll_interval_s = POLL_WITH_WAKEUPS_S if wakeups.available else POLL_SQLITE_S
        self.deliveries = Deliveries(
            self,
            poll_interval_s=poll_interval_s,
            sweep_interval_s=sweep_interval_s,
            token_ttl_s=token_ttl_s,
        )
        self.deliveries.wakeups = wakeups if wakeups.available else None
        self.seed_threads = SeedThreads()  # submissions with a seed: parses wait here

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(*RESULT_BUTTONS)
        if self.sync_on_start and self.settings.dev_guild_id:
            await self.sync_commands(discord.Object(self.settings.dev_guild_id))
        home = self.settings.home_guild_id
        if self.sync_on_start and home and home != self.settings.dev_guild_id:
            await self.sync_commands(discord.Object(home), copy_global=False)  # the admin commands
        self.deliveries.start()  # delivers results that finished while the bot was away

    async def sync_commands(
        self, guild: discord.abc.Snowflake | None, *, copy_global: bool = True
    ) -> int:
        """Publish the commands to one guild (instant) or, with None, globally (slow to spread).
        The admin commands belong to the home guild alone; a global sync refreshes it too."""
        try:
            if guild is not None and copy_global:
                self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            home = self.settings.home_guild_id
            if guild is None and home:
                await self.tree.sync(guild=discord.Object(home))
        except discord.HTTPException as exc:
            log.warning("command sync to %s failed: %s", guild.id if guild else "global", exc)
            return 0
        log.info("synced %d commands to %s", len(synced), f"guild {guild.id}" if guild else "all")
        return len(synced)

    async def on_ready(self) -> None:
        """Say where the bot is, and the invite URL: a new bot is in no server yet, and its
        owner needs that URL to add it (on_ready fires again on reconnects: said once)."""
        if self._said_ready or self.application_id is None:
            return
        self._said_ready = True
        url = invite_url(self.application_id)
        if not self.guilds:
            log.warning("Motif is in no server yet. Add it to yours with this link: %s", url)
        else:
            log.info("Motif is in %d server(s); invite link: %s", len(self.guilds), url)

    async def on_command_error(self, context: commands.Context, error: Exception) -> None:
        if isinstance(error, commands.CommandNotFound | commands.CheckFailure):
            return  # a mention is usually not a command
        log.error("prefix command %s failed", context.command, exc_info=error)

    async def close(self) -> None:
        await self.deliveries.stop()
        self.seed_threads.close()
        await super().close()

    def close_on_sigterm(self) -> None:
        """`docker stop` and systemd send SIGTERM, which would kill the process where it stands:
        close the bot instead, as Ctrl-C does (progress messages get their restart notice)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(self.close()))

    async def serve(self, token: str) -> None:
        """Log in, connect and run until closed (by Ctrl-C, SIGTERM or `close`)."""
        async with self:
            self.close_on_sigterm()
            await self.start(token)
