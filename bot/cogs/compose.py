"""`/compose`, the "Continue this MIDI" context menu and "@Motif + a seed" messages.

A seed is a MIDI, ABC or MusicXML file, or ABC text (`/compose abc:`, or a code block).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import weakref
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.destinations import MessageDestination
from bot.discord_limits import fitted_content
from bot.errors import apology, new_error_id, user_text
from bot.requesters import requester_from_interaction, requester_from_message
from bot.seeds import (
    check_pasted_abc,
    check_seed_attachment,
    find_seed_attachment,
    pasted_abc,
    read_seed,
)
from engine.errors import BadMidi, BadParams, MotifError, RateLimited
from engine.music import catalog
from engine.music.notation import PASTED_NAME, abc_in_code_block
from engine.music.request import ComposeOptions
from engine.service.requests import Requester, validate_options

if TYPE_CHECKING:
    from bot.client import MotifBot

log = logging.getLogger(__name__)

STYLE_CHOICES = [app_commands.Choice(name=s, value=s) for s in catalog.STYLES]
INSTRUMENT_CHOICES = [app_commands.Choice(name=n, value=n) for n in list(catalog.INSTRUMENTS)[:25]]
ENDING_CHOICES = [
    app_commands.Choice(name="close (a held note of the key's home chord)", value="close"),
    app_commands.Choice(name="open (to extend it later)", value="open"),
]
IMAGE_CHOICES = [
    app_commands.Choice(name="score (notation)", value="score"),
    app_commands.Choice(name="piano roll", value="pianoroll"),
]

# Discord shows these ranges in the client but does not enforce them: validate_options does.
# The bars' upper end is the settings' (MOTIF_MAX_BARS), set when the cog is made.
Bars = app_commands.Range[int, 1, catalog.MAX_BARS_CEILING]
Temperature = app_commands.Range[float, catalog.MIN_TEMPERATURE, catalog.MAX_TEMPERATURE]
Tempo = app_commands.Range[float, catalog.MIN_TEMPO, catalog.MAX_TEMPO]
RngSeed = app_commands.Range[int, 0, catalog.MAX_RNG_SEED]
REFUSAL_QUIET_S = 10.0  # a mention flood's other refusals in this window get no reply
FromBar = app_commands.Range[int, 2, catalog.MAX_FROM_BAR]


class Compose(commands.Cog):
    def __init__(self, bot: MotifBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(
            name="Continue this MIDI", callback=self.continue_this_midi
        )
        bot.tree.add_command(self.menu)
        # the client offers the bars the settings allow, not the ceiling: a replaced parameter
        # on this cog's own copy of the command (discord.py has no public setter)
        bars = self.compose._params["bars"]
        self.compose._params["bars"] = dataclasses.replace(bars, max_value=bot.settings.max_bars)
        self._mention_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._quiet_until: dict[int, float] = {}

    def _answered_recently(self, user_id: int, error: MotifError) -> bool:
        """True when this user got a refusal a moment ago (then stay quiet); else remember now."""
        now = time.monotonic()
        if self._quiet_until.get(user_id, 0.0) > now:
            return True
        if len(self._quiet_until) > 10_000:
            self._quiet_until = {u: t for u, t in self._quiet_until.items() if t > now}
        quiet = error.retry_after_s if isinstance(error, RateLimited) else REFUSAL_QUIET_S
        self._quiet_until[user_id] = now + min(quiet, 60.0)
        return False

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def start(
        self,
        interaction: discord.Interaction,
        options: ComposeOptions,
        attachment: discord.Attachment | None,
        origin: str,
        seed_owner: Requester | None = None,
        abc: str | None = None,
    ) -> int:
        seed, seed_name = None, ""
        # before deferring: these refusals stay ephemeral
        if attachment is not None:
            check_seed_attachment(attachment)
        elif abc:
            check_pasted_abc(abc)
        await interaction.response.defer(thinking=True)
        who = requester_from_interaction(interaction, origin)
        if attachment is not None:
            await asyncio.to_thread(self.bot.jobs.precheck, who)  # refused: nothing downloaded
            seed, seed_name = await read_seed(attachment), attachment.filename
        elif abc:
            seed, seed_name = await asyncio.to_thread(pasted_abc, abc), PASTED_NAME
        request_id = await self.submit(who, options, seed, seed_name, seed_owner)
        interaction.extras["request_id"] = request_id
        self.bot.deliveries.follow(request_id, self.bot.deliveries.for_interaction(interaction))
        return request_id

    async def submit(
        self,
        who: Requester,
        options: ComposeOptions,
        seed: bytes | None,
        seed_name: str,
        seed_owner: Requester | None = None,
    ) -> int:
        """`jobs.compose`, in the seed threads when there is a seed to parse."""
        if seed is None:
            return await asyncio.to_thread(self.bot.jobs.compose, who, options)
        return await self.bot.seed_threads.run(
            self.bot.jobs.compose, who, options, seed, seed_name, seed_owner
        )

    @app_commands.command(name="compose")
    @app_commands.describe(
        seed="A MIDI, ABC or MusicXML file to continue; leave it out to start from scratch",
        abc="Or an ABC tune to continue, pasted here (X:, M:, L:, K: then the notes)",
        style="The style to lean towards",
        bars="How many bars to add",
        temperature="Lower is safer and more repetitive, higher is wilder (0.1 to 2)",
        instrument="The instrument of the audio preview",
        tempo="Tempo in BPM (default: the seed's)",
        rng_seed="A number that makes the result repeatable",
        image="The picture shown with the result (the other is one click away)",
        from_bar="Continue from this bar: the bars before it are the seed (default: the end)",
        ending="How the continuation ends (default: close)",
    )
    @app_commands.choices(
        style=STYLE_CHOICES,
        instrument=INSTRUMENT_CHOICES,
        image=IMAGE_CHOICES,
        ending=ENDING_CHOICES,
    )
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
        abc: str | None = None,
        image: str | None = None,
        from_bar: FromBar | None = None,
        ending: str | None = None,
    ) -> None:
        """Continue a melody: attach a MIDI, ABC or MusicXML seed, paste ABC, or start from scratch"""
        if seed is not None and abc:
            raise BadParams("give one seed: a file or ABC text, not both.")
        options = validate_options(
            bars=bars,
            style=style,
            temperature=temperature,
            instrument=instrument,
            tempo=tempo,
            rng_seed=rng_seed,
            image=image,
            settings=self.bot.settings,
            from_bar=from_bar,
            ending=ending,
        )
        await self.start(interaction, options, seed, "slash", abc=abc)

    async def continue_this_midi(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        attachment = find_seed_attachment(message.attachments)
        abc = abc_in_code_block(message.content or "") if attachment is None else None
        if attachment is None and abc is None:
            if message.attachments:
                check_seed_attachment(message.attachments[0])  # says why it is not usable
            raise BadMidi(
                "That message has no MIDI, ABC or MusicXML file (nor an ABC code block) to continue."
            )
        options = validate_options(settings=self.bot.settings)
        # The seed is the message author's music: its consent is theirs, not the presser's.
        owner = Requester() if message.author.bot else requester_from_message(message)
        await self.start(interaction, options, attachment, "menu", owner, abc=abc)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A message that mentions the bot (or a DM) with a seed file or an ABC code block is a
        request with defaults."""
        me = self.bot.user
        addressed = me is not None and (me in message.mentions or message.guild is None)
        if message.author.bot or not addressed:
            return
        attachment = find_seed_attachment(message.attachments)
        abc = abc_in_code_block(message.content or "") if attachment is None else None
        if attachment is None and abc is None and not message.attachments:
            return  # a plain mention (or a prefix command such as `sync`)
        # One user's mentions are handled one at a time, limits first: a flood of them costs
        # one download per accepted request and one answer per refusal window.
        lock = self._mention_locks.setdefault(message.author.id, asyncio.Lock())
        try:
            async with lock:
                if attachment is None and abc is None:
                    check_seed_attachment(message.attachments[0])
                    return
                who = requester_from_message(message)
                await asyncio.to_thread(self.bot.jobs.precheck, who)
                if attachment is not None:
                    data, name = await read_seed(attachment), attachment.filename
                else:
                    data, name = await asyncio.to_thread(pasted_abc, abc or ""), PASTED_NAME
                options = validate_options(settings=self.bot.settings)
                request_id = await self.submit(who, options, data, name)
        except MotifError as exc:
            if self._answered_recently(message.author.id, exc):
                log.info("not answering another refusal to %s: %s", message.author.id, exc)
                return
            await message.reply(fitted_content(user_text(exc)), mention_author=False)
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
