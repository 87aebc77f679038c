"""What the bot asks of a server: the OAuth2 scopes and channel permissions its code uses, and
the invite URL built from them (`motif invite`; logged when the bot starts).

Each permission is here because a code path needs it (`USES` says which); the gateway intents
are bot.client.INTENTS, none of them privileged.
"""

from __future__ import annotations

import base64
import binascii
import re

import discord

# "bot" joins the server as a member; "applications.commands" lets /compose, /motif and the
# message menu appear there.
SCOPES = ("bot", "applications.commands")
USES = {
    "view_channel": "see the channel a request came from, to post a late result there",
    "send_messages": "post a result after the interaction's 15 minutes "
    "(bot/destinations.py ChannelDestination.post) and answer mentions",
    "send_messages_in_threads": "the same in a thread",
    "embed_links": "the result's embed (parameters, notes, the inline score page)",
    "attach_files": "the MIDI, MusicXML, PDF, audio and pictures of a result",
    "read_message_history": "reply to the message that mentioned the bot "
    "(MessageDestination: `reference=` the request)",
}
PERMISSIONS = discord.Permissions(**dict.fromkeys(USES, True))
PRIVILEGED_INTENTS = ("members", "presences", "message_content")
# a bot token: the bot's user id in base64, a timestamp, an HMAC (three dot-separated parts)
_TOKEN = re.compile(r"^([A-Za-z0-9_-]{17,32})\.([A-Za-z0-9_-]{4,12})\.([A-Za-z0-9_-]{20,})$")


def application_id(token: str) -> int | None:
    """The bot's user id (= its application's id) read from a token, or None when the token
    does not have a bot token's form."""
    match = _TOKEN.match(token.strip())
    if match is None:
        return None
    first = match[1]
    try:
        text = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(text) if text.isdigit() and 15 <= len(text) <= 21 else None


def invite_url(client_id: int) -> str:
    """The URL a server owner opens to add the bot with exactly what it uses."""
    return discord.utils.oauth_url(client_id, permissions=PERMISSIONS, scopes=SCOPES)


def privileged_intents(intents: discord.Intents) -> list[str]:
    """The privileged intents (Developer Portal switches) among `intents`."""
    return [name for name in PRIVILEGED_INTENTS if getattr(intents, name)]
