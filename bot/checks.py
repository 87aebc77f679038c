"""`admin_only()`: the one gate in front of every admin command, audited.

`default_permissions` only hides a command (and a server's admins can change it), so the run-time
check decides, from settings alone (`engine.service.admin.is_admin`). It defers first: the audit write
must not make the interaction miss Discord's 3-second deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import discord
from discord import app_commands

from engine.service import admin

log = logging.getLogger(__name__)

T = TypeVar("T")


class NotAdmin(app_commands.CheckFailure):
    """Refused by `admin_only()`; the text is the user's answer."""


def admin_rights(interaction: discord.Interaction) -> bool:
    """Whether the user may use admin commands here (no I/O: settings and the payload only)."""
    settings = interaction.client.settings  # type: ignore[attr-defined]
    perms = interaction.permissions
    # The role ids of the payload: `Member.roles` drops roles of a guild that is not cached.
    role_ids = getattr(interaction.user, "_roles", None)  # discord.py is pinned (2.7)
    if role_ids is None:
        role_ids = [r.id for r in getattr(interaction.user, "roles", ())]
    roles = frozenset(int(r) for r in role_ids)
    return admin.is_admin(
        settings,
        interaction.user.id,
        guild_id=interaction.guild_id,
        role_ids=roles,
        manage_guild=perms.manage_guild or perms.administrator,
    )


def _options(interaction: discord.Interaction) -> str:
    return " ".join(f"{k}={v}" for k, v in vars(interaction.namespace).items())[:500]


async def check_admin(interaction: discord.Interaction) -> bool:
    # guild_only is a hint to Discord's client; a crafted call from a DM is refused here.
    allowed = interaction.guild_id is not None and admin_rights(interaction)
    if not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)
    command = interaction.command
    action = command.qualified_name if command is not None else "admin"
    detail = f"guild={interaction.guild_id} {_options(interaction)}".strip()
    settings = interaction.client.settings  # type: ignore[attr-defined]
    await asyncio.to_thread(admin.audit, settings, interaction.user.id, action, allowed, detail)
    if not allowed:
        raise NotAdmin(f"`/{action}` is for Motif's admins only; this attempt has been logged.")
    return True


def admin_only() -> Callable[[T], T]:
    """A run-time check that audits every attempt, plus `guild_only` and
    `default_permissions(manage_guild=True)` so members do not even see the command.
    (On a subcommand Discord ignores the last two: set them on its group.)"""

    def decorator(func: Any) -> Any:
        func = app_commands.check(check_admin)(func)
        func = app_commands.default_permissions(manage_guild=True)(func)
        return app_commands.guild_only()(func)

    return decorator
