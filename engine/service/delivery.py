"""Delivery leases: which bot process posts a finished request's result, and whether it was.

A claim is a compare-and-set on the request row with a lease, so exactly one bot delivers and a
dead bot's claim can be taken over when its lease runs out.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from engine.settings import Settings, get_settings
from engine.store.db import dml, session_scope
from engine.store.records import Request, RequestStatus, utcnow


class DeliveryLeases:
    """Claims on delivering results, bound to one set of settings (JobService includes it)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.url = self.settings.sqlalchemy_url

    def undelivered(self, limit: int = 50) -> list[int]:
        """Finished requests from chat that were never delivered (e.g. the bot was down) and that
        no bot process is delivering now (no live claim)."""
        now = utcnow()
        with session_scope(self.url) as session:
            return list(
                session.scalars(
                    select(Request.id)
                    .where(
                        Request.status.in_((RequestStatus.DONE, RequestStatus.FAILED)),
                        Request.delivered_at.is_(None),
                        Request.channel_id.is_not(None),
                        (Request.delivery_claimed_until.is_(None))
                        | (Request.delivery_claimed_until < now),
                    )
                    .order_by(Request.id)
                    .limit(limit)
                )
            )

    def claim_delivery(self, request_id: int, owner: str, lease_s: float) -> bool:
        """Take (or renew) the right to post a request's result for `lease_s` seconds.

        Compare-and-set: True for exactly one bot process at a time; a claim whose lease ran out
        (its bot died) can be taken over; a delivered request cannot be claimed."""
        now = utcnow()
        with session_scope(self.url) as session:
            result = dml(
                session,
                update(Request)
                .where(
                    Request.id == request_id,
                    Request.delivered_at.is_(None),
                    (Request.delivery_claimed_until.is_(None))
                    | (Request.delivery_claimed_until < now)
                    | (Request.delivery_claimed_by == owner),
                )
                .values(
                    delivery_claimed_by=owner,
                    delivery_claimed_until=now + timedelta(seconds=lease_s),
                ),
            )
            return result.rowcount == 1

    def release_delivery(self, request_id: int, owner: str) -> None:
        """Give a claim back before its lease runs out (the owner stopped watching)."""
        with session_scope(self.url) as session:
            session.execute(
                update(Request)
                .where(Request.id == request_id, Request.delivery_claimed_by == owner)
                .values(delivery_claimed_until=None)
            )

    def mark_delivered(self, request_id: int) -> None:
        with session_scope(self.url) as session:
            session.execute(
                update(Request).where(Request.id == request_id).values(delivered_at=utcnow())
            )
