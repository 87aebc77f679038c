"""Who asked for a job and where to answer, taken from an interaction or a message."""

from __future__ import annotations

import discord

from engine.service.requests import Requester
from engine.store.records import RequestOrigin


def requester_from_interaction(interaction: discord.Interaction, origin: str) -> Requester:
    """`origin`: a `RequestOrigin` value ("slash", "menu", "button")."""
    return Requester(
        discord_id=interaction.user.id,
        name=interaction.user.name[:100],
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        interaction_id=interaction.id,
        origin=RequestOrigin(origin),
    )


def requester_from_message(
    message: discord.Message, origin: str = RequestOrigin.MENTION
) -> Requester:
    return Requester(
        discord_id=message.author.id,
        name=message.author.name[:100],
        guild_id=message.guild.id if message.guild else None,
        channel_id=message.channel.id,
        interaction_id=None,
        origin=RequestOrigin(origin),
    )
