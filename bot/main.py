"""Starting the bot: check the token and the database schema, then connect to Discord.

`run(settings)` is what `motif bot` and `python -m bot` call; it returns an exit code.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import aiohttp
import discord

from bot.client import MotifBot
from engine.errors import SchemaOutOfDate, ServiceUnavailable
from engine.settings import Settings, get_settings
from engine.store.db import ensure_schema

log = logging.getLogger(__name__)

NO_TOKEN = """\
motif bot: DISCORD_TOKEN is not set.
Create an application at https://discord.com/developers/applications, add a bot, copy its token,
then run `DISCORD_TOKEN=... python -m bot` (or put DISCORD_TOKEN=... in .env)."""


def _no_voice_warning(record: logging.LogRecord) -> bool:
    # Motif never joins a voice channel: discord.py's "PyNaCl is not installed" is noise
    return "voice will NOT be supported" not in record.getMessage()


# discord.py's DEBUG lines name interaction and webhook URLs, whose last part is a token that
# lets anyone answer as the bot for 15 minutes.
_TOKEN_IN_URL = re.compile(r"(/(?:interactions|webhooks)/\d+/)[\w.\-]{20,}")
_TOKEN_FIELD = re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+""")


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_FIELD.sub(r"\1<token>", _TOKEN_IN_URL.sub(r"\1<token>", message))
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_tokens_in_logs() -> None:
    """Put `RedactTokens` on every handler of the root logger (where discord.py's lines go)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactTokens) for f in handler.filters):
            handler.addFilter(RedactTokens())


def run(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    token = settings.discord_token.get_secret_value().strip() if settings.discord_token else ""
    if not token:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        # The embedded SQLite default is created on first use; a real server is migrated by hand.
        ensure_schema(settings.sqlalchemy_url, auto_create=not settings.database_url)
    except (SchemaOutOfDate, ServiceUnavailable) as exc:
        print(f"motif bot: {exc.user_message}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:  # `motif bot` has set logging up already
        discord.utils.setup_logging(
            level=getattr(logging, settings.log_level.upper(), logging.INFO)
        )
    logging.getLogger("discord.client").addFilter(_no_voice_warning)
    redact_tokens_in_logs()

    bot = MotifBot(settings)
    try:
        asyncio.run(bot.serve(token))
    except KeyboardInterrupt:
        pass  # Ctrl-C: asyncio.run cancelled `serve`, which closed the bot on its way out
    except discord.LoginFailure:
        print(
            "motif bot: Discord refused the token in DISCORD_TOKEN; copy it again.", file=sys.stderr
        )
        return 2
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        print(
            f"motif bot: cannot reach Discord ({exc}). Check this machine's network, DNS or "
            "proxy, then start the bot again.",
            file=sys.stderr,
        )
        return 2
    return 0


def main() -> int:
    from pydantic import ValidationError

    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"motif bot: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    return run(settings)
