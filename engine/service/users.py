"""Who asks: a requester (a Discord user, the command line) and the user row behind them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.errors import NotAllowed, NotFound
from engine.store.records import Request, RequestOrigin, User


@dataclass(frozen=True)
class Requester:
    """Who asked and where: enough to answer later, in the channel, after a restart."""

    discord_id: int | None = None
    name: str = ""
    guild_id: int | None = None
    channel_id: int | None = None
    interaction_id: int | None = None
    origin: RequestOrigin = RequestOrigin.CLI


def user_for(session: Session, discord_id: int, name: str = "") -> User:
    """The user row for a Discord id, created on first sight (safe when two requests race)."""
    user = session.scalar(select(User).where(User.discord_id == discord_id))
    if user is not None:
        return user
    try:
        with session.begin_nested():
            user = User(discord_id=discord_id, name=name[:100])
            session.add(user)
        return user
    except IntegrityError:
        # Another request created it between our read and our insert.
        user = session.scalar(select(User).where(User.discord_id == discord_id))
        assert user is not None
        return user


def user_of(session: Session, who: Requester) -> User | None:
    """The user row of a requester; None for the command line (no Discord id)."""
    if who.discord_id is None:
        return None
    return user_for(session, who.discord_id, who.name)


def require_owner(session: Session, req: Request, who: Requester) -> User:
    user = user_of(session, who)
    if user is None or req.user_id != user.id:
        raise NotAllowed("only the person who asked for this tune can do that.")
    return user


def require_visible(session: Session, req: Request, who: Requester) -> None:
    """A follow-up (reroll, extend, vary) may start from a request its clicker can see: their
    own, or one posted in the channel they click in. A forged button id naming someone's DM
    request is refused, and says nothing about it."""
    if who.channel_id is not None and req.channel_id == who.channel_id:
        return
    user = user_of(session, who)
    if user is not None and req.user_id == user.id:
        return
    if who.discord_id is None and who.origin == RequestOrigin.CLI:
        return  # the command line is the operator's
    raise NotFound(f"request #{req.id} does not exist.")


def parse_queue_key(who: Requester) -> str:
    """Whose turn a seed's parse is in the parsers' fair queue (and whose budget it uses)."""
    if who.discord_id is not None:
        return f"discord:{who.discord_id}"
    return f"{who.origin}:{who.name}"
