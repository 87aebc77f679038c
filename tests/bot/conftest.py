"""Fixtures for the bot's tests: a fresh database, seed MIDI bytes, pluggable workers, mocks of
discord.py interactions, and a real bot logged in to the fake Discord of `fake_discord`.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest.mock import AsyncMock, MagicMock

import discord
import pytest
from sqlalchemy import select

from engine.errors import NotFound
from engine.service.requests import JobService
from engine.settings import Settings
from engine.store import db
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import Artifact, ArtifactKind, Request, RequestStatus, utcnow
from tests.bot.fake_discord import (
    CHANNEL_ID,
    GUILD_ID,
    FakeDiscord,
    Payloads,
    patched_base,
    version_supported,
)
from tests.conftest import default_model_present, make_settings

TOKEN = "fake-token-abc123"


def midi_bytes(n_notes: int = 8, program: int = 0) -> bytes:
    """A real little melody, written with pretty_midi."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(program=program, name="melody")
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    for i in range(n_notes):
        inst.notes.append(
            pretty_midi.Note(velocity=90, pitch=scale[i % 8], start=i * 0.5, end=i * 0.5 + 0.45)
        )
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 4), (40, 40, 90)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bot_settings(tmp_path: Path) -> Settings:
    s = make_settings(
        tmp_path,
        progress_edit_interval_s=0.5,
        dev_guild_id=GUILD_ID,
        home_guild_id=GUILD_ID,
        owner_user_ids="7",
    )
    db.upgrade(s.sqlalchemy_url)
    return s


@pytest.fixture
def dispatched() -> list[int]:
    return []


@pytest.fixture
def jobs(bot_settings: Settings, dispatched: list[int]) -> JobService:
    return JobService(bot_settings, dispatch=dispatched.append)


# --- workers: the simulated one steps through states; the pipeline runs the real model ------------
class SimulatedWorker:
    """Plays a GPU worker's part in SQL and the artifact store, one state at a time."""

    writes_pdf = False  # it stores the five files a chat result always has
    model_version = "test-model-1"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _wait_visible(self, request_id: int) -> None:
        # The job is dispatched before its row commits (as in engine.service.requests); a worker waits.
        wait_until(lambda: self._exists(request_id), timeout=10)

    def _exists(self, request_id: int) -> bool:
        with session_scope(self.settings.sqlalchemy_url) as s:
            return s.get(Request, request_id) is not None

    def _update(self, request_id: int, **values: Any) -> None:
        self._wait_visible(request_id)
        with session_scope(self.settings.sqlalchemy_url) as s:
            req = s.get(Request, request_id)
            assert req is not None
            for k, v in values.items():
                setattr(req, k, v)

    def generating(self, request_id: int) -> None:
        self._update(
            request_id,
            status=RequestStatus.GENERATING,
            generating_at=utcnow(),
            model_version=self.model_version,
            device="cpu",
        )

    def rendering(self, request_id: int) -> None:
        self._update(request_id, status=RequestStatus.RENDERING, rendering_at=utcnow())

    def finish(self, request_id: int, *, shortened: bool = False, audio_size: int = 3000) -> None:
        self._wait_visible(request_id)
        store = store_for(self.settings.artifact_root)
        files = {
            ArtifactKind.MIDI: (f"motif-{request_id}.mid", midi_bytes(16), "audio/midi"),
            ArtifactKind.AUDIO: (
                f"motif-{request_id}.ogg",
                b"OggS" + b"\0" * audio_size,
                "audio/ogg",
            ),
            ArtifactKind.IMAGE: (f"motif-{request_id}.png", png_bytes(), "image/png"),
            ArtifactKind.SCORE: (f"motif-{request_id}-score.png", png_bytes(), "image/png"),
            ArtifactKind.MUSICXML: (
                f"motif-{request_id}.musicxml",
                b'<?xml version="1.0"?><score-partwise version="4.0"/>',
                "application/vnd.recordare.musicxml+xml",
            ),
        }
        with session_scope(self.settings.sqlalchemy_url) as s:
            req = s.get(Request, request_id)
            assert req is not None
            for kind, (name, data, ctype) in files.items():
                key = f"requests/{request_id}/{name}"
                store.put(key, data)
                s.add(
                    Artifact(
                        request_id=request_id,
                        kind=kind,
                        key=key,
                        size=len(data),
                        content_type=ctype,
                    )
                )
            req.status = RequestStatus.DONE
            req.model_version = req.model_version or self.model_version
            req.timings = {"queue_wait_s": 0.1, "generate_s": 0.25, "render_s": 0.2}
            req.notes = {**(req.notes or {}), **({"shortened": True} if shortened else {})}
            req.finished_at = utcnow()

    def fail(self, request_id: int, message: str) -> None:
        self._update(
            request_id, status=RequestStatus.FAILED, error_user=message, finished_at=utcnow()
        )

    def complete(self, request_id: int) -> RequestStatus:
        self.generating(request_id)
        self.rendering(request_id)
        self.finish(request_id)
        return RequestStatus.DONE


class PipelineWorker:
    """The real thing in-process: `engine.worker.pipeline.process_request` (model + FluidSynth)."""

    writes_pdf = True  # the real render stage adds the whole score as a PDF

    def __init__(self, settings: Settings) -> None:
        try:
            from engine.worker.pipeline import process_request
        except ImportError as exc:
            pytest.skip(f"engine.worker.pipeline is not importable yet: {exc}")
        if not default_model_present():
            pytest.skip("the default model (engine/data/motif-default.pt) does not exist yet")
        self.settings = settings
        self._process = process_request

    def complete(self, request_id: int) -> RequestStatus:
        wait_until(lambda: SimulatedWorker(self.settings)._exists(request_id), timeout=10)
        try:
            return self._process(request_id, self.settings)
        except FileNotFoundError as exc:
            pytest.skip(f"process_request needs a file that is not there yet: {exc}")


@pytest.fixture
def worker(bot_settings: Settings) -> SimulatedWorker:
    return SimulatedWorker(bot_settings)


@pytest.fixture(params=["simulated", "pipeline"])
def any_worker(request: pytest.FixtureRequest, bot_settings: Settings):  # type: ignore[no-untyped-def]
    if request.param == "simulated":
        return SimulatedWorker(bot_settings)
    return PipelineWorker(bot_settings)


def wait_until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


async def until(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def queued(jobs: JobService, dispatched: list[int], count: int = 1) -> list[int]:
    """Wait until `count` jobs were dispatched and their rows committed; returns their ids."""

    def visible() -> bool:
        if len(dispatched) < count:
            return False
        try:
            for request_id in dispatched:
                jobs.progress(request_id)
        except NotFound:
            return False
        return True

    await until(visible)
    return list(dispatched)


# --- layer 1: discord.py objects without Discord ------------------------------------------------
def real_attachment(filename: str, data: bytes | None, *, size: int | None = None):  # type: ignore[no-untyped-def]
    """A real `discord.Attachment` whose download (`http.get_from_cdn`) is an AsyncMock."""
    state = MagicMock()
    state.http.get_from_cdn = AsyncMock(return_value=data)
    payload = {
        "id": "555",
        "filename": filename,
        "size": size if size is not None else len(data or b""),
        "url": f"https://cdn.example/attachments/1/555/{filename}",
        "proxy_url": f"https://media.example/attachments/1/555/{filename}",
    }
    return discord.Attachment(data=payload, state=state), state.http.get_from_cdn


def mock_interaction(
    client: Any,
    *,
    user_id: int = 42,
    permissions: discord.Permissions | None = None,
    roles: tuple[int, ...] = (),
    age: timedelta = timedelta(0),
) -> MagicMock:
    """`MagicMock(spec=discord.Interaction)` whose response/followup are spec'd AsyncMocks.

    The response remembers whether it was used, like the real one (`is_done`, `type`).
    """
    it = MagicMock(spec=discord.Interaction)
    it.client = client
    it.id = 1234
    it.guild_id = GUILD_ID
    it.channel_id = CHANNEL_ID
    it.created_at = discord.utils.utcnow() - age
    it.filesize_limit = 10 * 1024 * 1024
    it.extras = {}
    it.command = None
    it.permissions = permissions or discord.Permissions.none()
    user = MagicMock(spec=discord.Member)
    user.id = user_id
    user.name = f"user{user_id}"
    user.roles = [discord.Object(r) for r in roles]
    it.user = user

    response = AsyncMock(spec=discord.InteractionResponse)
    response.type = None
    response.is_done.side_effect = lambda: response.type is not None

    async def defer(**kwargs: Any) -> None:
        response.type = discord.InteractionResponseType.deferred_channel_message

    async def send_message(*args: Any, **kwargs: Any) -> None:
        response.type = discord.InteractionResponseType.channel_message

    response.defer.side_effect = defer
    response.send_message.side_effect = send_message
    it.response = response
    it.followup = AsyncMock(spec=discord.Webhook)
    return it


# --- layer 2: a real bot against the fake Discord ------------------------------------------------
class Harness:
    def __init__(self, fake: FakeDiscord, settings: Settings, jobs: JobService, **bot_options):  # type: ignore[no-untyped-def]
        self.fake = fake
        self.settings = settings
        self.jobs = jobs
        self.bot_options = {"poll_interval_s": 0.05, "sweep_interval_s": 0.2, **bot_options}
        self.payloads = Payloads(fake)
        self.bot = None

    async def start(self, **overrides: Any):  # type: ignore[no-untyped-def]
        from bot.client import MotifBot

        options = {**self.bot_options, **overrides}
        self.bot = MotifBot(self.settings, self.jobs, **options)
        await self.bot.login(TOKEN)
        return self.bot

    async def restart(self, **overrides: Any):  # type: ignore[no-untyped-def]
        """A new bot instance (new process, in effect) on the same database."""
        await self.stop_bot()
        return await self.start(**overrides)

    async def stop_bot(self) -> None:
        if self.bot is not None:
            await self.bot.close()
            self.bot = None

    def inject(self, payload: dict) -> None:
        assert self.bot is not None
        self.bot._connection.parse_interaction_create(payload)

    def inject_message(self, payload: dict) -> None:
        assert self.bot is not None
        self.bot._connection.parse_message_create(payload)

    def requests(self) -> list[Request]:
        with session_scope(self.settings.sqlalchemy_url) as s:
            return list(s.scalars(select(Request).order_by(Request.id)))


@asynccontextmanager
async def discord_harness(
    settings: Settings, jobs: JobService, **bot_options: Any
) -> AsyncIterator[Harness]:
    if not version_supported():
        pytest.skip(f"the fake Discord is written for discord.py 2.7, not {discord.__version__}")
    fake = FakeDiscord()
    await fake.start()
    try:
        async with patched_base(fake):
            harness = Harness(fake, settings, jobs, **bot_options)
            await harness.start()
            try:
                yield harness
            finally:
                await harness.stop_bot()
    finally:
        await fake.stop()
