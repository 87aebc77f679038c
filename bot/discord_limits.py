"""Discord's documented limits, written once, and the one helper that cuts what the bot sends to
them. Discord refuses a whole message over any limit (and the user would get an apology), so
every text and embed goes through `fitted` on its way out."""

from __future__ import annotations

import discord

CONTENT_CHARS = 2000
EMBED_TITLE_CHARS = 256
EMBED_DESCRIPTION_CHARS = 4096
EMBED_FIELDS = 25
FIELD_NAME_CHARS = 256
FIELD_VALUE_CHARS = 1024
FOOTER_CHARS = 2048
AUTHOR_CHARS = 256
EMBEDS_TOTAL_CHARS = 6000  # across every embed of one message
REQUEST_BYTES = 25 * 1024 * 1024  # one request, files and multipart framing together
# The JSON part (content, embed, components), the part headers and boundaries of one request:
# about 4.5 KB measured for a result; the room here covers a full 6,000-character embed.
MULTIPART_MARGIN_BYTES = 64 * 1024
COMMAND_DESCRIPTION_CHARS = 100
CHOICES = 25
ELLIPSIS = "…"


def clipped(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with an ellipsis when it was longer."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def embed_size(embed: discord.Embed) -> int:
    """The characters Discord counts towards the 6,000 of a message."""
    fields = sum(len(f.name or "") + len(f.value or "") for f in embed.fields)
    return (
        len(embed.title or "")
        + len(embed.description or "")
        + fields
        + len(embed.footer.text or "")
        + len(embed.author.name or "")
    )


def fitted_embed(embed: discord.Embed) -> discord.Embed:
    """A copy of `embed` within every embed limit: each part cut, fields beyond 25 dropped,
    then the description and the longest field values shortened until the whole fits."""
    out = embed.copy()
    if out.title:
        out.title = clipped(out.title, EMBED_TITLE_CHARS)
    if out.description:
        out.description = clipped(out.description, EMBED_DESCRIPTION_CHARS)
    if out.fields:
        fields = [
            (clipped(f.name or "-", FIELD_NAME_CHARS), clipped(f.value or "-", FIELD_VALUE_CHARS))
            for f in out.fields[:EMBED_FIELDS]
        ]
        inline = [bool(f.inline) for f in out.fields]
        out.clear_fields()
        for (name, value), flag in zip(fields, inline, strict=False):
            out.add_field(name=name, value=value, inline=flag)
    if out.footer.text:
        out.set_footer(text=clipped(out.footer.text, FOOTER_CHARS), icon_url=out.footer.icon_url)
    if out.author.name:
        out.set_author(
            name=clipped(out.author.name, AUTHOR_CHARS),
            url=out.author.url,
            icon_url=out.author.icon_url,
        )
    excess = embed_size(out) - EMBEDS_TOTAL_CHARS
    if excess > 0 and out.description:
        out.description = clipped(out.description, max(1, len(out.description) - excess))
        excess = embed_size(out) - EMBEDS_TOTAL_CHARS
    while excess > 0 and out.fields:
        index, longest = max(enumerate(out.fields), key=lambda f: len(f[1].value or ""))
        value = longest.value or ""
        if len(value) <= 1:
            out.remove_field(index)
        else:
            keep = max(1, len(value) - excess)
            out.set_field_at(
                index, name=longest.name, value=clipped(value, keep), inline=bool(longest.inline)
            )
        excess = embed_size(out) - EMBEDS_TOTAL_CHARS
    return out


def fitted_content(text: str | None) -> str | None:
    return None if text is None else clipped(text, CONTENT_CHARS)


def upload_budget(per_request: int = REQUEST_BYTES) -> int:
    """The bytes of files one request may carry: the request's cap less its framing."""
    return per_request - MULTIPART_MARGIN_BYTES
