"""`/compose`, the "Continue this MIDI" context menu and "@Motif + a MIDI file" messages."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery import MessageDestination
from bot.errors import apology, new_error_id, user_text
from bot.requesters import requester_from_interaction, requester_from_message
from bot.seeds import check_seed_attachment, find_midi_attachment, read_seed
from engine import catalog
from engine.errors import BadMidi, MotifError
from engine.jobs import ComposeOptions, validate_options

if TYPE_CHECKING:
    from bot.client import MotifBot

log = logging.getLogger(__name__)

STYLE_CHOICES = [app_commands.Choice(name=s, value=s) for s in catalog.STYLES]
INSTRUMENT_CHOICES = [app_commands.Choice(name=n, value=n) for n in list(catalog.INSTRUMENTS)[:25]]

# Discord shows these ranges in the client but does not enforce them: validate_options does.
Bars = app_commands.Range[int, 1, 256]
Temperature = app_commands.Range[float, catalog.MIN_TEMPERATURE, catalog.MAX_TEMPERATURE]
Tempo = app_commands.Range[float, catalog.MIN_TEMPO, catalog.MAX_TEMPO]
RngSeed = app_commands.Range[int, 0, catalog.MAX_RNG_SEED]
FromBar = app_commands.Range[int, 2, catalog.MAX_FROM_BAR]


class Compose(commands.Cog):
    def __init__(self, bot: MotifBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(
            name="Continue this MIDI", callback=self.continue_this_midi
        )
        bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def start(
        self,
        interaction: discord.Interaction,
        options: ComposeOptions,
        attachment: discord.Attachment | None,
        origin: str,
    ) -> int:
        if attachment is not None:
            check_seed_attachment(attachment)  # before deferring: the refusal stays ephemeral
        await interaction.response.defer(thinking=True)
        seed, seed_name = None, ""
        if attachment is not None:
            seed, seed_name = await read_seed(attachment), attachment.filename
        request_id = await asyncio.to_thread(
            self.bot.jobs.compose,
            requester_from_interaction(interaction, origin),
            options,
            seed,
            seed_name,
        )
        interaction.extras["request_id"] = request_id
        self.bot.deliveries.follow(request_id, self.bot.deliveries.for_interaction(interaction))
        return request_id

    @app_commands.command(name="compose")
    @app_commands.describe(
        seed="A MIDI file (.mid/.midi) to continue; leave it out to start from scratch",
        style="The style to lean towards",
        bars="How many bars to add",
        temperature="Lower is safer and more repetitive, higher is wilder (0.1 to 2)",
        instrument="The instrument of the audio preview",
        tempo="Tempo in BPM (default: the seed's)",
        rng_seed="A number that makes the result repeatable",
        from_bar="Continue from this bar of the seed: the bars before it are the seed (default: the end)",
    )
    @app_commands.choices(style=STYLE_CHOICES, instrument=INSTRUMENT_CHOICES)
    async def compose(
        self,
        interaction: discord.Interaction,
        seed: discord.Attachment | None = None,
        style: str | None = None,
        bars: Bars | None = None,
        temperature: Temperature | None = None,
        instrument: str | None = None,
        tempo: Tempo | None = None,
        rng_seed: RngSeed | None = None,
        from_bar: FromBar | None = None,
    ) -> None:
        """Continue a melody with Motif's model: attach a MIDI seed or start from scratch."""
        options = validate_options(
            bars=bars,
            style=style,
            temperature=temperature,
            instrument=instrument,
            tempo=tempo,
            rng_seed=rng_seed,
            settings=self.bot.settings,
            from_bar=from_bar,
        )
        await self.start(interaction, options, seed, "slash")

    async def continue_this_midi(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        attachment = find_midi_attachment(message.attachments)
        if attachment is None:
            if message.attachments:
                check_seed_attachment(message.attachments[0])  # says why it is not usable
            raise BadMidi("That message has no MIDI attachment (.mid or .midi) to continue.")
        options = validate_options(settings=self.bot.settings)
        await self.start(interaction, options, attachment, "menu")

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A message that mentions the bot (or a DM) with a MIDI file is a request with defaults."""
        me = self.bot.user
        addressed = me is not None and (me in message.mentions or message.guild is None)
        if message.author.bot or not addressed:
            return
        attachment = find_midi_attachment(message.attachments)
        if attachment is None and not message.attachments:
            return  # a plain mention (or a prefix command such as `sync`)
        try:
            if attachment is None:
                check_seed_attachment(message.attachments[0])
                return
            data = await read_seed(attachment)
            options = validate_options(settings=self.bot.settings)
            request_id = await asyncio.to_thread(
                self.bot.jobs.compose,
                requester_from_message(message),
                options,
                data,
                attachment.filename,
            )
        except MotifError as exc:
            await message.reply(user_text(exc), mention_author=False)
            return
        except Exception:
            error_id = new_error_id()
            log.exception(
                "unexpected error %s handling a mention from %s", error_id, message.author.id
            )
            await message.reply(apology(error_id), mention_author=False)
            return
        progress = await message.reply(f"⏳ Request #{request_id} is queued…", mention_author=False)
        self.bot.deliveries.follow(request_id, MessageDestination(self.bot, progress, message))


async def setup(bot: MotifBot) -> None:
    await bot.add_cog(Compose(bot))
