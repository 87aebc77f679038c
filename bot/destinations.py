"""Where a result goes: the interaction's response while its token lives, a reply to a mention,
or a channel message; and which files fit Discord's upload limits."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import discord

from bot.discord_limits import fitted_content, fitted_embed, upload_budget
from engine.service.requests import JobService
from engine.settings import Settings

Channel = discord.abc.GuildChannel | discord.Thread | discord.abc.PrivateChannel

log = logging.getLogger(__name__)

REQUEST_LIMIT_BYTES = 25 * 1024 * 1024  # Discord's cap for all files of one message
ATTACH_ORDER = {
    "midi": 0,
    "musicxml": 1,
    "pdf": 2,
    "audio": 3,
    "image": 4,
    "score": 5,
    "score-2": 6,
}
PICTURE_KINDS = {"score": "score", "pianoroll": "image"}  # inline choice -> artifact kind
LATER_PAGES = {"score-2": "score"}  # a score's later pages show (or hide) with its first


def _picture(kind: str) -> str:
    return LATER_PAGES.get(kind, kind)


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    kind: str
    spoiler: bool = False  # shown blurred: one click away

    def file(self) -> discord.File:
        return discord.File(io.BytesIO(self.data), filename=self.filename, spoiler=self.spoiler)


def inline_picture(uploads: list[Upload], choice: str) -> list[Upload]:
    """The uploads with one picture to show inline (`choice`: "score" or "pianoroll", or the
    other when that one is missing) and every other picture behind a spoiler, one click away."""
    kinds = {u.kind for u in uploads}
    wanted = PICTURE_KINDS.get(choice, "score")
    if wanted not in kinds:
        wanted = next((k for k in PICTURE_KINDS.values() if k in kinds), wanted)
    pictures = set(PICTURE_KINDS.values())
    return [
        replace(u, spoiler=True)
        if _picture(u.kind) in pictures and _picture(u.kind) != wanted
        else u
        for u in uploads
    ]


FILES_PER_REQUEST = upload_budget(REQUEST_LIMIT_BYTES)  # the request's cap less its framing


def fit_uploads(uploads: list[Upload], per_file: int, per_message: int = FILES_PER_REQUEST):
    """The uploads that fit Discord's limits, and the kinds left out (largest dropped first).
    `per_message`: the bytes of files one request may carry (its framing counted)."""
    kept = [u for u in uploads if len(u.data) <= per_file]
    left_out = [u.kind for u in uploads if len(u.data) > per_file]
    while kept and sum(len(u.data) for u in kept) > per_message:
        largest = max(kept, key=lambda u: len(u.data))
        kept.remove(largest)
        left_out.append(largest.kind)
    return sorted(kept, key=lambda u: ATTACH_ORDER.get(u.kind, 9)), left_out


class TokenExpired(Exception):
    """The interaction token is (about to be) too old to edit or follow up."""


# --- where a result goes ----------------------------------------------------------------------
class Host(Protocol):
    """What destinations and deliveries use of the bot (bot.client.MotifBot): a Protocol, so the
    modules the client builds on never import the client."""

    @property
    def settings(self) -> Settings: ...

    @property
    def jobs(self) -> JobService: ...

    def get_channel(self, id: int, /) -> Channel | None: ...

    def get_partial_messageable(
        self, id: int, *, guild_id: int | None = None, type: discord.ChannelType | None = None
    ) -> discord.PartialMessageable: ...

    async def create_dm(self, user: discord.abc.Snowflake) -> discord.DMChannel: ...


class ChannelDestination:
    """A plain channel message that mentions the person who asked (no token needed)."""

    def __init__(
        self,
        bot: Host,
        channel_id: int,
        user_id: int | None,
        *,
        reference: discord.Message | None = None,
    ) -> None:
        self.bot = bot
        self.channel_id = channel_id
        self.user_id = user_id
        self.reference = reference
        self.upload_limit = bot.settings.upload_cap_bytes

    def can_edit_progress(self) -> bool:
        return False

    async def edit_progress(self, text: str, view: discord.ui.View | None = None) -> None:
        return None  # nothing to edit

    async def post(
        self,
        content: str,
        *,
        embed: discord.Embed | None = None,
        uploads: Sequence[Upload] = (),
        view: discord.ui.View | None = None,
        mention: bool = True,
    ) -> None:
        channel = self.bot.get_channel(self.channel_id) or self.bot.get_partial_messageable(
            self.channel_id
        )
        if mention and self.user_id and self.reference is None:
            content = f"<@{self.user_id}> {content}"
        content = fitted_content(content) or ""
        embed = fitted_embed(embed) if embed is not None else None
        users = [discord.Object(self.user_id)] if self.user_id else False
        kwargs = {}
        if self.reference is not None:
            kwargs["reference"] = self.reference
            kwargs["mention_author"] = True
        await channel.send(  # type: ignore[union-attr]
            content,
            embed=embed,
            files=[u.file() for u in uploads],
            view=view,
            allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=users),
            **kwargs,
        )


class MessageDestination(ChannelDestination):
    """A mention-triggered request: progress in the bot's reply, the result as a reply too."""

    def __init__(self, bot: Host, progress_message: discord.Message, request: discord.Message):
        super().__init__(bot, request.channel.id, request.author.id, reference=request)
        self.progress_message = progress_message

    def can_edit_progress(self) -> bool:
        return True

    async def edit_progress(self, text: str, view: discord.ui.View | None = None) -> None:
        await self.progress_message.edit(content=fitted_content(text), view=view)


class InteractionDestination:
    """The original response of an interaction while its token lives, then the channel."""

    def __init__(
        self,
        bot: Host,
        interaction: discord.Interaction,
        *,
        token_ttl_s: float,
        ephemeral: bool = False,
    ) -> None:
        self.bot = bot
        self.interaction = interaction
        self.token_ttl_s = token_ttl_s
        self.ephemeral = ephemeral
        self.upload_limit = interaction.filesize_limit or bot.settings.upload_cap_bytes
        self.fallback = ChannelDestination(bot, interaction.channel_id or 0, interaction.user.id)

    def expired(self) -> bool:
        age = (discord.utils.utcnow() - self.interaction.created_at).total_seconds()
        return age >= self.token_ttl_s

    def can_edit_progress(self) -> bool:
        return not self.expired()

    async def edit_progress(self, text: str, view: discord.ui.View | None = None) -> None:
        """Show `text` with `view`'s buttons (none: the message keeps no buttons)."""
        if self.expired():
            raise TokenExpired
        await self.interaction.edit_original_response(content=fitted_content(text), view=view)

    async def post(
        self,
        content: str,
        *,
        embed: discord.Embed | None = None,
        uploads: Sequence[Upload] = (),
        view: discord.ui.View | None = None,
        mention: bool = True,
    ) -> None:
        content = fitted_content(content) or ""
        embed = fitted_embed(embed) if embed is not None else None
        if not self.expired():
            try:
                kwargs = {"embed": embed} if embed is not None else {}
                if view is not None:
                    kwargs["view"] = view
                await self.interaction.followup.send(
                    content,
                    files=[u.file() for u in uploads],
                    ephemeral=self.ephemeral,
                    wait=True,
                    **kwargs,
                )
                return
            except (discord.NotFound, discord.Forbidden) as exc:
                # 401/404: the token died early (e.g. the clock is off); fall through to the channel
                log.info("interaction follow-up refused (%s); posting to the channel", exc.status)
            except discord.HTTPException as exc:
                if exc.status != 401:
                    raise
        if self.ephemeral:
            # only the requester was meant to see it: a direct message, never the channel
            await self._direct_message(content, embed=embed, uploads=uploads)
            return
        if not self.fallback.channel_id:
            raise TokenExpired("no channel to post a late result to")
        await self.fallback.post(content, embed=embed, uploads=uploads, view=view, mention=mention)

    async def _direct_message(
        self, content: str, *, embed: discord.Embed | None, uploads: Sequence[Upload]
    ) -> None:
        user_id = self.interaction.user.id
        try:
            channel = await self.bot.create_dm(discord.Object(user_id))
            kwargs = {"embed": embed} if embed is not None else {}
            await channel.send(content, files=[u.file() for u in uploads], **kwargs)
        except discord.HTTPException as exc:  # DMs closed, or the user left: drop it, log it
            log.warning(
                "an ephemeral result for user %s outlived its token and could not be sent by DM "
                "(%s); dropped: %.200s",
                user_id,
                exc,
                content,
            )


class Destination(Protocol):
    """Where a request's progress and result go: an interaction, a reply, a channel."""

    upload_limit: int

    def can_edit_progress(self) -> bool: ...

    async def edit_progress(self, text: str, view: discord.ui.View | None = None) -> None: ...

    async def post(
        self,
        content: str,
        *,
        embed: discord.Embed | None = None,
        uploads: Sequence[Upload] = (),
        view: discord.ui.View | None = None,
        mention: bool = True,
    ) -> None: ...
