"""A tiny fake of Discord's REST API and CDN on 127.0.0.1, and the gateway payloads we inject.

A real `discord.Client` logs in against it (`Route.BASE` patched); interactions arrive through
`client._connection.parse_interaction_create(payload)`, which is private API: discord.py is
pinned to 2.7 and every payload is built by `Payloads` below, so a version bump breaks one place.
Tests assert on what the fake received (routes, JSON, multipart file names).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import discord
import discord.http
from aiohttp import web

PINNED = (2, 7)
API = "/api/v10"
APP_ID = 900000000000000001
BOT_ID = APP_ID
GUILD_ID = 910000000000000001
CHANNEL_ID = 920000000000000001
GUILD_B_ID = 910000000000000002  # a second server: anyone can add the bot to their own
CHANNEL_B_ID = 920000000000000002
DM_CHANNEL_BASE = 930000000000000000  # + user id: the DM channel with that user
UPLOAD_LIMIT = 10 * 1024 * 1024
REQUEST_LIMIT = 25 * 1024 * 1024  # one request: its files and the multipart framing
FIRST_RESPONSE_S = 3.0  # an interaction must be answered within 3 s...
TOKEN_TTL_S = 15 * 60  # ...and its token works for follow-ups and edits for 15 minutes
CONTENT_LIMIT = 2000
CUSTOM_ID_LIMIT = 100
EDITS_PER_WINDOW, EDIT_WINDOW_S = 5, 5.0  # per message, as Discord's per-route buckets
MENTION = re.compile(r"<@!?(\d+)>|<@&(\d+)>|@(everyone|here)")


def version_supported() -> bool:
    return tuple(discord.version_info[:2]) == PINNED


@dataclass
class Call:
    method: str
    path: str  # without /api/v10
    query: dict[str, str]
    json: Any
    files: list[tuple[str, str, bytes]] = field(default_factory=list)  # (field, filename, data)
    at: float = field(default_factory=time.monotonic)
    status: int = 200  # what the fake answered
    pings: list[str] = field(default_factory=list)  # "user:<id>", "role:<id>", "everyone"

    @property
    def filenames(self) -> list[str]:
        return [f[1] for f in self.files]


CALL = web.RequestKey("call", Call)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only decodes JSON when the header is exactly "application/json".
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


def pings(body: dict[str, Any], replied_user: int | None = None) -> list[str]:
    """Who a message with this body would notify, by Discord's rules for `allowed_mentions`
    (absent: everything in the content pings)."""
    allowed = body.get("allowed_mentions")
    parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse", []))
    users = {str(u) for u in (allowed or {}).get("users", [])}
    roles = {str(r) for r in (allowed or {}).get("roles", [])}
    out = []
    for user, role, everyone in MENTION.findall(body.get("content") or ""):
        if user and ("users" in parse or user in users):
            out.append(f"user:{user}")
        elif role and ("roles" in parse or role in roles):
            out.append(f"role:{role}")
        elif everyone and "everyone" in parse:
            out.append("everyone")
    if replied_user is not None and (allowed is None or allowed.get("replied_user", True)):
        out.append(f"user:{replied_user}")
    return out


def embed_limits_broken(embeds: list[dict[str, Any]]) -> str | None:
    """What Discord's documented embed limits refuse in these embeds, or None."""
    total = 0
    if len(embeds) > 10:
        return "embeds: at most 10"
    for e in embeds:
        fields = e.get("fields") or []
        parts = {
            "title": (e.get("title") or "", 256),
            "description": (e.get("description") or "", 4096),
            "footer.text": ((e.get("footer") or {}).get("text") or "", 2048),
            "author.name": ((e.get("author") or {}).get("name") or "", 256),
        }
        if len(fields) > 25:
            return "fields: at most 25"
        for f in fields:
            if not 1 <= len(f.get("name") or "") <= 256:
                return "fields.name: 1 to 256 characters"
            if not 1 <= len(f.get("value") or "") <= 1024:
                return "fields.value: 1 to 1024 characters"
            total += len(f["name"]) + len(f["value"])
        for name, (text, limit) in parts.items():
            if len(text) > limit:
                return f"{name}: at most {limit} characters"
            total += len(text)
    if total > 6000:
        return "embeds: at most 6000 characters in all"
    return None


def user_payload(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


class FakeDiscord:
    """Discord's REST API as far as Motif uses it; every request is recorded in `calls`."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.cdn: dict[str, bytes] = {}
        self.messages: dict[int, dict[str, Any]] = {}
        self.originals: dict[str, dict[str, Any]] = {}  # interaction token -> original message
        self.token_channels: dict[str, int] = {}
        self.token_created: dict[str, float] = {}  # token -> monotonic time of the interaction
        self.component_messages: dict[str, dict[str, Any]] = {}  # token -> the button's message
        self.acknowledged: set[str] = set()
        self.edits: dict[str, list[float]] = {}  # message -> times of its recent edits
        self.edit_limit = (EDITS_PER_WINDOW, EDIT_WINDOW_S)
        self.token_ttl_s = TOKEN_TTL_S
        self.upload_limit = UPLOAD_LIMIT
        self.fail_next: dict[str, int] = {}  # path regex -> HTTP status to answer once
        self._ids = itertools.count(1)
        self.bot_user = user_payload(BOT_ID, "Motif", bot=True)
        self.base = ""
        self._runner: web.AppRunner | None = None
        self.changed = asyncio.Event()

    # --- ids and messages ---------------------------------------------------------------------
    def snowflake(self, when: datetime | None = None) -> int:
        return discord.utils.time_snowflake(when or datetime.now(UTC)) + next(self._ids)

    def message(
        self,
        channel_id: int,
        body: dict[str, Any],
        files: list[tuple[str, str, bytes]],
        **extra: Any,
    ) -> dict[str, Any]:
        mid = self.snowflake()
        data = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "author": self.bot_user,
            "content": body.get("content") or "",
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [
                {
                    "id": str(self.snowflake()),
                    "filename": name,
                    "size": len(blob),
                    "url": f"{self.base}/cdn/{mid}/{name}",
                    "proxy_url": f"{self.base}/cdn/{mid}/{name}",
                }
                for _, name, blob in files
            ],
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "type": 0,
            "components": body.get("components") or [],
            "flags": body.get("flags") or 0,
        }
        data.update(extra)
        self.messages[mid] = data
        return data

    # --- the server ---------------------------------------------------------------------------
    async def _read(self, request: web.Request) -> tuple[Any, list[tuple[str, str, bytes]]]:
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            body: Any = None
            files = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    body = json.loads(await part.text())
                elif part.filename:
                    files.append((part.name or "", part.filename, bytes(await part.read())))
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        path = request.path.removeprefix(API)
        body, files = await self._read(request)
        call = Call(request.method, path, dict(request.query), body, files)
        self.calls.append(call)
        request[CALL] = call
        try:
            for pattern, status in list(self.fail_next.items()):
                if re.fullmatch(pattern, f"{request.method} {path}"):
                    del self.fail_next[pattern]
                    call.status = status
                    return _json({"message": "fake failure", "code": 0}, status)
            refusal = self._refuse(request, call)
            response = refusal or await handler(request)
            call.status = response.status
            return response
        finally:
            self.changed.set()

    # --- Discord's rules ------------------------------------------------------------------------
    def _refuse(self, request: web.Request, call: Call) -> web.Response | None:
        """What Discord would refuse: late or repeated first responses, dead tokens, long
        content, large uploads, long custom ids, and edits faster than the rate limit."""
        token = request.match_info.get("token")
        body = call.json if isinstance(call.json, dict) else {}
        if "/callback" in call.path and token is not None:
            body = body.get("data") or {}
            created = self.token_created.get(token)
            if created is not None and time.monotonic() - created > FIRST_RESPONSE_S:
                return _error(404, 10062, "Unknown interaction")
            if token in self.acknowledged:
                return _error(400, 40060, "Interaction has already been acknowledged.")
        elif call.path.startswith("/webhooks/") and token is not None:
            created = self.token_created.get(token)
            if created is not None and time.monotonic() - created > self.token_ttl_s:
                return _error(401, 50027, "Invalid Webhook Token")
        if len(body.get("content") or "") > CONTENT_LIMIT:
            return _error(
                400, 50035, "Invalid Form Body: content: Must be 2000 or fewer in length."
            )
        for row in body.get("components") or []:
            for item in row.get("components") or []:
                if len(item.get("custom_id") or "") > CUSTOM_ID_LIMIT:
                    return _error(400, 50035, "Invalid Form Body: custom_id too long.")
        sizes = [len(blob) for _, _, blob in call.files]
        size = max(request.content_length or 0, sum(sizes))  # the whole body, when it says
        if sizes and (max(sizes) > self.upload_limit or size > REQUEST_LIMIT):
            return _error(413, 40005, "Request entity too large")
        embed_error = embed_limits_broken(body.get("embeds") or [])
        if embed_error:
            return _error(400, 50035, f"Invalid Form Body: {embed_error}")
        if call.method == "PATCH" and "/messages/" in call.path:
            key = call.path if not call.path.endswith("@original") else f"original:{token}"
            now = time.monotonic()
            per_window, window_s = self.edit_limit
            recent = [t for t in self.edits.get(key, []) if now - t < window_s]
            if len(recent) >= per_window:
                retry = round(window_s - (now - recent[0]), 3)
                return _json(
                    {
                        "message": "You are being rate limited.",
                        "retry_after": retry,
                        "global": False,
                    },
                    429,
                    # discord.py treats a 429 without Via (Discord's proxy) as a Cloudflare ban
                    {"Retry-After": str(retry), "X-RateLimit-Scope": "user", "Via": "1.1 google"},
                )
            self.edits[key] = [*recent, now]
        call.pings = pings(body, self._replied_user(body))
        return None

    def _replied_user(self, body: dict[str, Any]) -> int | None:
        ref = body.get("message_reference") or {}
        msg = self.messages.get(int(ref.get("message_id", 0) or 0))
        return int(msg["author"]["id"]) if msg else None

    def pinged(self) -> list[str]:
        return [p for c in self.calls for p in c.pings]

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=64 * 1024 * 1024)
        r = app.router
        r.add_get(API + "/users/@me", self._me)
        r.add_get(API + "/oauth2/applications/@me", self._application)
        r.add_put(API + "/applications/{app}/commands", self._put_commands)
        r.add_put(API + "/applications/{app}/guilds/{guild}/commands", self._put_commands)
        r.add_post(API + "/interactions/{iid}/{token}/callback", self._callback)
        r.add_route("*", API + "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message)
        r.add_post(API + "/webhooks/{app}/{token}", self._followup)
        r.add_post(API + "/channels/{cid}/messages", self._channel_send)
        r.add_post(API + "/users/@me/channels", self._open_dm)
        r.add_patch(API + "/channels/{cid}/messages/{mid}", self._channel_edit)
        r.add_get("/cdn/{path:.*}", self._cdn)
        r.add_route("*", "/{path:.*}", self._unknown)
        return app

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self.bot_user)

    async def _application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(APP_ID),
                "name": "Motif",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user_payload(1, "owner"),
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": self.bot_user,
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        commands = request[CALL].json or []
        out = []
        for c in commands:
            item = dict(c, id=str(self.snowflake()), application_id=str(APP_ID), version="1")
            item.setdefault("description", "")
            if "guild" in request.match_info:
                item["guild_id"] = request.match_info["guild"]
            out.append(item)
        return _json(out)

    async def _callback(self, request: web.Request) -> web.Response:
        body = request[CALL].json or {}
        token = request.match_info["token"]
        kind = body.get("type")
        data = body.get("data") or {}
        channel = self.token_channels.get(token, CHANNEL_ID)
        self.acknowledged.add(token)
        if kind in (4, 5):  # a message now, or "thinking…" that the original response replaces
            self.originals[token] = self.message(channel, data, request[CALL].files)
        elif kind in (6, 7) and token in self.component_messages:
            # a button's interaction: its original response is the message the button is on
            self.originals[token] = self.component_messages[token]
            if kind == 7:
                self.originals[token].update({k: v for k, v in data.items() if k == "content"})
        return _json(
            {
                "interaction": {
                    "id": request.match_info["iid"],
                    "type": 2,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(data.get("flags", 0) & 64),
                }
            }
        )

    async def _webhook_message(self, request: web.Request) -> web.Response:
        token, mid = request.match_info["token"], request.match_info["mid"]
        original = self.originals.get(token) if mid == "@original" else self.messages.get(int(mid))
        if original is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        if request.method == "DELETE":
            self.originals.pop(token, None)
            return web.Response(status=204)
        if request.method == "PATCH":
            body = request[CALL].json or {}
            for key in ("content", "embeds", "components"):
                if key in body:
                    original[key] = body[key]
            original["edited_timestamp"] = datetime.now(UTC).isoformat()
        return _json(original)

    async def _followup(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        call = request[CALL]
        channel = self.token_channels.get(token, CHANNEL_ID)
        return _json(self.message(channel, call.json or {}, call.files, webhook_id=str(APP_ID)))

    async def _channel_send(self, request: web.Request) -> web.Response:
        call = request[CALL]
        return _json(self.message(int(request.match_info["cid"]), call.json or {}, call.files))

    async def _open_dm(self, request: web.Request) -> web.Response:
        user_id = int((request[CALL].json or {})["recipient_id"])
        return _json(
            {
                "id": str(DM_CHANNEL_BASE + user_id % 10**9),
                "type": 1,
                "last_message_id": None,
                "recipients": [user_payload(user_id, f"user{user_id}")],
            }
        )

    async def _channel_edit(self, request: web.Request) -> web.Response:
        msg = self.messages.get(int(request.match_info["mid"]))
        if msg is None:
            return _json({"message": "Unknown Message", "code": 10008}, 404)
        msg.update({k: v for k, v in (request[CALL].json or {}).items() if k in ("content",)})
        return _json(msg)

    async def _cdn(self, request: web.Request) -> web.Response:
        data = self.cdn.get(request.match_info["path"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def _unknown(self, request: web.Request) -> web.Response:
        return _json({"message": f"fake: no route {request.method} {request.path}", "code": 0}, 404)

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- looking at what arrived --------------------------------------------------------------
    def find(self, method: str, path_regex: str) -> list[Call]:
        return [
            c
            for c in self.calls
            if re.fullmatch(method, c.method) and re.fullmatch(path_regex, c.path)
        ]

    async def wait_for(self, method: str, path_regex: str, count: int = 1, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(method, path_regex)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = "\n".join(f"  {c.method} {c.path}" for c in self.calls)
                raise AssertionError(f"no {count}x {method} {path_regex}; received:\n{seen}")
            self.changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=0.05)


@asynccontextmanager
async def patched_base(fake: FakeDiscord):
    old = discord.http.Route.BASE
    discord.http.Route.BASE = fake.base + API
    try:
        yield
    finally:
        discord.http.Route.BASE = old


class Payloads:
    """Gateway payloads (INTERACTION_CREATE, MESSAGE_CREATE) in one place."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._tokens = itertools.count(1)

    def member(self, user_id: int, *, permissions: int = 0, roles: tuple[int, ...] = ()) -> dict:
        return {
            "user": user_payload(user_id, f"user{user_id}"),
            "roles": [str(r) for r in roles],
            "joined_at": "2025-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "permissions": str(permissions),
        }

    @staticmethod
    def channel_of(guild_id: int | None, user_id: int = 42) -> int:
        if guild_id is None:
            return DM_CHANNEL_BASE + user_id % 10**9
        return CHANNEL_B_ID if guild_id == GUILD_B_ID else CHANNEL_ID

    def channel(self, guild_id: int | None = GUILD_ID, user_id: int = 42) -> dict:
        if guild_id is None:
            return {
                "id": str(self.channel_of(None, user_id)),
                "type": 1,
                "last_message_id": None,
                "recipients": [user_payload(user_id, f"user{user_id}")],
            }
        return {
            "id": str(self.channel_of(guild_id)),
            "type": 0,
            "guild_id": str(guild_id),
            "name": "music",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }

    def attachment(self, filename: str, data: bytes | None, *, size: int | None = None) -> dict:
        aid = self.fake.snowflake()
        path = f"attachments/{CHANNEL_ID}/{aid}/{filename}"
        if data is not None:
            self.fake.cdn[path] = data
        return {
            "id": str(aid),
            "filename": filename,
            "size": size if size is not None else len(data or b""),
            "url": f"{self.fake.base}/cdn/{path}",
            "proxy_url": f"{self.fake.base}/cdn/{path}",
            "content_type": "audio/midi",
        }

    def _interaction(
        self,
        kind: int,
        data: dict,
        *,
        user_id: int,
        permissions: int,
        roles=(),  # type: ignore[no-untyped-def]
        age_s: float = 0,
        guild_id: int | None = GUILD_ID,
    ) -> dict:
        """An INTERACTION_CREATE; `guild_id=None` is one in a DM (a user, no member)."""
        # as long as a real one (discord.py's DEBUG logs must not show it: RedactTokens)
        token = f"token-{next(self._tokens)}-" + secrets.token_urlsafe(120)
        channel_id = self.channel_of(guild_id, user_id)
        self.fake.token_channels[token] = channel_id
        self.fake.token_created[token] = time.monotonic() - age_s
        when = datetime.now(UTC) - timedelta(seconds=age_s)
        payload = {
            "id": str(self.fake.snowflake(when)),
            "application_id": str(APP_ID),
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": self.channel(guild_id, user_id),
            "data": data,
            "locale": "en-US",
            "app_permissions": str(discord.Permissions.all().value),
            "entitlements": [],
            "attachment_size_limit": self.fake.upload_limit,
        }
        if guild_id is None:
            payload.update(
                user=user_payload(user_id, f"user{user_id}"),
                authorizing_integration_owners={"1": str(user_id)},
                context=1,
            )
        else:
            payload.update(
                guild_id=str(guild_id),
                guild_locale="en-US",
                member=self.member(user_id, permissions=permissions, roles=roles),
                authorizing_integration_owners={"0": str(guild_id)},
                context=0,
            )
        return payload

    @staticmethod
    def _option(name: str, value: Any) -> dict:
        if isinstance(value, dict) and "filename" in value:
            return {"name": name, "type": 11, "value": value["id"]}
        if isinstance(value, bool):
            return {"name": name, "type": 5, "value": value}
        if isinstance(value, int):
            return {"name": name, "type": 4, "value": value}
        if isinstance(value, float):
            return {"name": name, "type": 10, "value": value}
        return {"name": name, "type": 3, "value": value}

    def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        user_id: int = 42,
        permissions: int = 0,
        roles: tuple[int, ...] = (),
        age_s: float = 0,
        guild_id: int | None = GUILD_ID,
    ) -> dict:
        opts = [self._option(k, v) for k, v in (options or {}).items()]
        attachments = {
            v["id"]: v for v in (options or {}).values() if isinstance(v, dict) and "filename" in v
        }
        if subcommand:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        data: dict[str, Any] = {
            "id": str(self.fake.snowflake()),
            "name": name,
            "type": 1,
            "options": opts,
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        if attachments:
            data["resolved"] = {"attachments": attachments}
        return self._interaction(
            2,
            data,
            user_id=user_id,
            permissions=permissions,
            roles=roles,
            age_s=age_s,
            guild_id=guild_id,
        )

    def autocomplete(
        self,
        name: str,
        subcommand: str,
        option: str,
        value: str,
        *,
        user_id: int = 42,
        permissions: int = 0,
        guild_id: int | None = GUILD_ID,
    ) -> dict:
        focused = {"name": option, "type": 3, "value": value, "focused": True}
        data = {
            "id": str(self.fake.snowflake()),
            "name": name,
            "type": 1,
            "options": [{"name": subcommand, "type": 1, "options": [focused]}],
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        return self._interaction(
            4, data, user_id=user_id, permissions=permissions, guild_id=guild_id
        )

    def user_message(
        self,
        content: str,
        attachments: list[dict],
        *,
        author_id: int = 42,
        mention_bot: bool = False,
        guild_id: int | None = GUILD_ID,
    ) -> dict:
        message = {
            "id": str(self.fake.snowflake()),
            "channel_id": str(self.channel_of(guild_id, author_id)),
            "author": user_payload(author_id, f"user{author_id}"),
            "content": content,
            "timestamp": datetime.now(UTC).isoformat(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [self.fake.bot_user] if mention_bot else [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": [],
            "pinned": False,
            "type": 0,
            "components": [],
            "flags": 0,
        }
        if guild_id is not None:
            message["guild_id"] = str(guild_id)
            message["member"] = {k: v for k, v in self.member(author_id).items() if k != "user"}
        self.fake.messages[int(message["id"])] = message
        return message

    def message_command(self, name: str, target: dict, *, user_id: int = 42) -> dict:
        data = {
            "id": str(self.fake.snowflake()),
            "name": name,
            "type": 3,
            "target_id": target["id"],
            "resolved": {"messages": {target["id"]: target}},
            "guild_id": str(GUILD_ID),
        }
        return self._interaction(2, data, user_id=user_id, permissions=0)

    def button(self, custom_id: str, message: dict, *, user_id: int = 42) -> dict:
        data = {"custom_id": custom_id, "component_type": 2}
        payload = self._interaction(3, data, user_id=user_id, permissions=0)
        payload["message"] = message
        self.fake.component_messages[payload["token"]] = message
        return payload
