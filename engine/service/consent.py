"""Consent: ratings, sharing a tune with the training collection, and forgetting it again.

A tune made from someone else's seed joins only while that person shares the seed; `forget`
withdraws a user's tunes and every tune made from them.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.errors import BadParams, NotAllowed, NotFound
from engine.service.users import Requester, require_owner, require_visible, user_of
from engine.settings import Settings, get_settings
from engine.store.db import dml, session_scope
from engine.store.records import Feedback, Request, Tune, TuneSource, utcnow


class Consent:
    """Ratings and consent, bound to one set of settings (JobService includes it)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.url = self.settings.sqlalchemy_url

    def rate(self, request_id: int, who: Requester, rating: int) -> None:
        if rating not in (1, -1):
            raise BadParams("a rating is +1 or -1.")
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            require_visible(session, req, who)  # a forged button id learns nothing
            user = user_of(session, who)
            if user is None:
                raise BadParams("ratings need a user.")
            existing = session.scalar(
                select(Feedback).where(
                    Feedback.request_id == request_id, Feedback.user_id == user.id
                )
            )
            if existing is None:
                session.add(Feedback(request_id=request_id, user_id=user.id, rating=rating))
            else:
                existing.rating = rating
                existing.created_at = utcnow()

    @staticmethod
    def _sources_of(session: Session, tune: Tune) -> list[Tune]:
        """The tunes a generated tune was made from, through rerolls, variations and extensions
        (a result holds its seed's notes): seeds and the results they were extended from."""
        sources: list[Tune] = []
        frontier, seen = [tune], {tune.id}
        while frontier:
            current = frontier.pop()
            if current.source is not TuneSource.GENERATION:
                continue
            for source in session.scalars(
                select(Tune)
                .join(Request, Request.seed_tune_id == Tune.id)
                .where(Request.result_tune_id == current.id)
            ):
                if source.id not in seen:
                    seen.add(source.id)
                    sources.append(source)
                    frontier.append(source)
        return sources

    @staticmethod
    def _derived_from(session: Session, tune_ids: set[int]) -> set[int]:
        """The generated tunes made from these tunes, directly or through other results."""
        found: set[int] = set()
        frontier = set(tune_ids)
        while frontier:
            results = {
                tune_id
                for tune_id in session.scalars(
                    select(Request.result_tune_id).where(
                        Request.seed_tune_id.in_(frontier), Request.result_tune_id.is_not(None)
                    )
                )
                if tune_id is not None  # the query leaves none out; the type says they may be
            }
            frontier = results - found - tune_ids
            found |= frontier
        return found

    def share(self, request_id: int, who: Requester) -> int:
        """Consent to put this request's seed and result into the training collection.

        A tune made from someone else's seed joins only while that person shares the seed; a
        tune nobody owns, or one made from it, never joins this way."""
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            user = require_owner(session, req, who)
            count = 0
            blocked = False
            for tune in (req.seed_tune, req.result_tune):
                if tune is None:
                    continue
                # a tune nobody owns (seeded from a bot's or webhook's message, made on the
                # command line) is nobody's to give: it is never claimed here
                if tune.owner_id != user.id:
                    continue
                if any(
                    source.owner_id != user.id
                    and not (source.consent and source.withdrawn_at is None)
                    for source in self._sources_of(session, tune)
                ):
                    blocked = True
                    continue
                tune.consent = True
                tune.consent_at = utcnow()
                tune.withdrawn_at = None
                count += 1
            if count == 0 and blocked:
                raise NotAllowed(
                    "this tune was made from someone else's seed (or one nobody owns); it can "
                    "join the training collection only if they share their seed."
                )
            if count == 0:
                raise BadParams("there is nothing of yours to share in this request yet.")
            return count

    def set_share_by_default(self, who: Requester, value: bool) -> None:
        with session_scope(self.url) as session:
            user = user_of(session, who)
            if user is None:
                raise BadParams("this setting needs a user.")
            user.share_by_default = value

    def forget(self, who: Requester) -> int:
        """Withdraw every tune of this user from the training collection, and every tune made
        from their seeds by anyone (rerolls, variations, extensions of their music)."""
        with session_scope(self.url) as session:
            user = user_of(session, who)
            if user is None:
                return 0
            user.share_by_default = False
            own = set(session.scalars(select(Tune.id).where(Tune.owner_id == user.id)))
            withdraw = own | self._derived_from(session, own)
            if not withdraw:
                return 0
            result = dml(
                session,
                update(Tune)
                .where(Tune.id.in_(withdraw), Tune.consent.is_(True))
                .values(consent=False, withdrawn_at=utcnow()),
            )
            return int(result.rowcount or 0)
