"""The buttons under a result. They are `DynamicItem`s: the request id lives in the custom_id, so
they keep working after the bot restarts (registered with `add_dynamic_items` in `setup_hook`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Self

import discord
from discord.ui import Button, DynamicItem, Item

from bot.errors import guarded
from bot.requesters import requester_from_interaction
from engine.errors import BadParams
from engine.music import catalog
from engine.store.records import RequestKind

log = logging.getLogger(__name__)

VARIATION_STEP = 1.25  # one press multiplies or divides the temperature by this

SHARE_TEXT = (
    "**Share request #{req} with Motif?**\n"
    "Your seed and this result join the collection future Motif models are trained on. "
    "Nothing else about you is shared. You can withdraw everything at any time with `/forget`."
)


def varied_temperature(current: float, direction: str) -> float:
    """The temperature of a cooler ("lo") or hotter ("hi") variation, within the allowed range."""
    factor = VARIATION_STEP if direction == "hi" else 1 / VARIATION_STEP
    new = round(min(catalog.MAX_TEMPERATURE, max(catalog.MIN_TEMPERATURE, current * factor)), 2)
    if new == round(current, 2):
        edge = "highest" if direction == "hi" else "lowest"
        raise BadParams(f"the temperature is already at its {edge} ({current:g}).")
    return new


def _bot(interaction: discord.Interaction) -> Any:
    return interaction.client


async def start_follow_up(
    interaction: discord.Interaction, parent_id: int, kind: RequestKind, direction: str = ""
) -> None:
    """Reroll, extend or vary a request: a new job whose progress replaces a new message."""
    bot = _bot(interaction)
    await interaction.response.defer(thinking=True)
    who = requester_from_interaction(interaction, "button")
    temperature = None
    if kind is RequestKind.VARIATION:
        # only a request the clicker may see (a custom id can be forged)
        parent = await asyncio.to_thread(bot.jobs.visible_progress, parent_id, who)
        temperature = varied_temperature(float(parent.params.get("temperature", 1.0)), direction)
    request_id = await asyncio.to_thread(
        bot.jobs.follow_up, who, parent_id, kind, temperature=temperature
    )
    interaction.extras["request_id"] = request_id
    bot.deliveries.follow(request_id, bot.deliveries.for_interaction(interaction))


def _button(
    label: str | None,
    custom_id: str,
    emoji: str,
    style: discord.ButtonStyle = discord.ButtonStyle.secondary,
) -> Button[Any]:
    return Button(label=label, custom_id=custom_id, emoji=emoji, style=style)


# label, emoji, style of each follow-up that needs nothing but the parent's id
_FOLLOW_UPS: dict[RequestKind, tuple[str, str, discord.ButtonStyle]] = {
    RequestKind.REROLL: ("Reroll", "🎲", discord.ButtonStyle.primary),
    RequestKind.EXTEND: ("Extend", "➕", discord.ButtonStyle.secondary),
}


class FollowUpButton(DynamicItem[Button], template=r"motif:(?P<kind>reroll|extend):(?P<req>\d+)"):
    """Reroll or extend: a new request from this one (custom ids `motif:reroll:<id>` and
    `motif:extend:<id>`, as posted since the first release)."""

    def __init__(self, request_id: int, kind: RequestKind) -> None:
        label, emoji, style = _FOLLOW_UPS[kind]
        super().__init__(_button(label, f"motif:{kind.value}:{request_id}", emoji, style))
        self.request_id = request_id
        self.kind = kind

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> FollowUpButton:
        return cls(int(match["req"]), RequestKind(match["kind"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(interaction, start_follow_up(interaction, self.request_id, self.kind))


class VariationButton(DynamicItem[Button], template=r"motif:vary:(?P<dir>lo|hi):(?P<req>\d+)"):
    def __init__(self, request_id: int, direction: str) -> None:
        label, emoji = ("Cooler", "🧊") if direction == "lo" else ("Hotter", "🔥")
        super().__init__(_button(label, f"motif:vary:{direction}:{request_id}", emoji))
        self.request_id = request_id
        self.direction = direction

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["req"]), match["dir"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await guarded(
            interaction,
            start_follow_up(interaction, self.request_id, RequestKind.VARIATION, self.direction),
        )


class ShareButton(DynamicItem[Button], template=r"motif:share:(?P<req>\d+)"):
    """Asks first: consent is given with the button in the ephemeral question."""

    def __init__(self, request_id: int) -> None:
        super().__init__(
            _button("Share", f"motif:share:{request_id}", "🤝", discord.ButtonStyle.success),
            row=1,
        )
        self.request_id = request_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["req"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(ShareConsentButton(self.request_id))
        await guarded(
            interaction,
            interaction.response.send_message(
                SHARE_TEXT.format(req=self.request_id), view=view, ephemeral=True
            ),
        )


class ShareConsentButton(DynamicItem[Button], template=r"motif:consent:(?P<req>\d+)"):
    def __init__(self, request_id: int) -> None:
        super().__init__(
            _button(
                "Yes, share it", f"motif:consent:{request_id}", "✅", discord.ButtonStyle.success
            )
        )
        self.request_id = request_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["req"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def share() -> None:
            await interaction.response.defer()  # acknowledged before the database is asked
            who = requester_from_interaction(interaction, "button")
            count = await asyncio.to_thread(_bot(interaction).jobs.share, self.request_id, who)
            await interaction.edit_original_response(
                content=f"Thank you: {count} tune{'s' if count != 1 else ''} from request "
                f"#{self.request_id} shared. `/forget` withdraws them.",
                view=None,
            )

        await guarded(interaction, share())


class RateButton(DynamicItem[Button], template=r"motif:rate:(?P<vote>up|down):(?P<req>\d+)"):
    def __init__(self, request_id: int, vote: str) -> None:
        emoji = "👍" if vote == "up" else "👎"
        super().__init__(_button(None, f"motif:rate:{vote}:{request_id}", emoji), row=1)
        self.request_id = request_id
        self.vote = vote

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["req"]), match["vote"])

    async def callback(self, interaction: discord.Interaction) -> None:
        async def rate() -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            who = requester_from_interaction(interaction, "button")
            rating = 1 if self.vote == "up" else -1
            await asyncio.to_thread(_bot(interaction).jobs.rate, self.request_id, who, rating)
            await interaction.edit_original_response(
                content=f"Thanks for the feedback on #{self.request_id}."
            )

        await guarded(interaction, rate())


class CancelButton(DynamicItem[Button], template=r"motif:cancel:(?P<req>\d+)"):
    """Under a queued request's progress: its owner withdraws it before a worker takes it."""

    def __init__(self, request_id: int) -> None:
        super().__init__(
            _button("Cancel", f"motif:cancel:{request_id}", "✖️", discord.ButtonStyle.danger)
        )
        self.request_id = request_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(int(match["req"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        async def cancel() -> None:
            # acknowledged before the database is asked: Discord's 3 s pass on a slow database
            await interaction.response.defer(ephemeral=True, thinking=True)
            who = requester_from_interaction(interaction, "button")
            done = await asyncio.to_thread(_bot(interaction).jobs.cancel, self.request_id, who)
            text = (
                f"Request #{self.request_id} is cancelled."
                if done
                else f"Request #{self.request_id} has already started or ended; "
                "it can no longer be cancelled."
            )
            await interaction.edit_original_response(content=text)

        await guarded(interaction, cancel())


def progress_view(request_id: int) -> discord.ui.View:
    """The buttons under a request's progress while it waits in the queue."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(request_id))
    return view


RESULT_BUTTONS = (  # every persistent button, registered in setup_hook
    CancelButton,
    FollowUpButton,
    VariationButton,
    ShareButton,
    ShareConsentButton,
    RateButton,
)


def result_view(request_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(FollowUpButton(request_id, RequestKind.REROLL))
    view.add_item(FollowUpButton(request_id, RequestKind.EXTEND))
    view.add_item(VariationButton(request_id, "lo"))
    view.add_item(VariationButton(request_id, "hi"))
    view.add_item(ShareButton(request_id))
    view.add_item(RateButton(request_id, "up"))
    view.add_item(RateButton(request_id, "down"))
    return view
