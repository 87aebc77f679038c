"""Pure pieces of the bot: coalesced edits, upload limits, what the messages say, variations."""

from __future__ import annotations

import asyncio

import pytest

from bot import messages
from bot.destinations import Upload, fit_uploads, inline_picture
from bot.edit_throttle import EditThrottle
from bot.views import result_view, varied_temperature
from engine.errors import BadParams
from engine.service.requests import Progress
from engine.store.records import RequestKind, RequestStatus


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_coalesces_to_one_edit_per_interval_and_ends_on_the_latest_text():
    clock = FakeClock()
    shown: list[str] = []

    async def edit(text: str) -> None:
        shown.append(text)

    async def scenario() -> None:
        throttle = EditThrottle(edit, 2.0, clock=clock)
        assert await throttle.update("queued 3")
        for text in ("queued 2", "queued 1", "generating"):  # all within the interval
            clock.now += 0.5
            assert not await throttle.update(text)
        clock.now += 0.6  # 2.1 s after the first edit: the newest text goes out
        assert await throttle.update("generating")
        assert not await throttle.update("generating")  # unchanged: no edit
        clock.now += 5
        assert not await throttle.update("generating")

    asyncio.run(scenario())
    assert shown == ["queued 3", "generating"]


def test_throttle_final_text_waits_out_the_interval():
    shown: list[str] = []

    async def edit(text: str) -> None:
        shown.append(text)

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        throttle = EditThrottle(edit, 0.5)
        await throttle.update("rendering")
        started = loop.time()
        await throttle.show_now("ready")
        return loop.time() - started

    waited = asyncio.run(scenario())
    assert shown == ["rendering", "ready"] and waited >= 0.45


def test_uploads_over_the_limits_are_left_out_largest_first():
    files = [
        Upload("a.png", b"i" * 10, "image"),
        Upload("a.ogg", b"a" * 100, "audio"),
        Upload("a.mid", b"m" * 5, "midi"),
    ]
    kept, left = fit_uploads(files, per_file=50)
    assert [u.filename for u in kept] == ["a.mid", "a.png"] and left == ["audio"]
    kept, left = fit_uploads(files, per_file=1000, per_message=20)
    assert [u.kind for u in kept] == ["midi", "image"] and left == ["audio"]
    kept, left = fit_uploads(files, per_file=1000)
    assert [u.kind for u in kept] == ["midi", "audio", "image"] and left == []


def progress(status: RequestStatus, **kw) -> Progress:  # type: ignore[no-untyped-def]
    values = dict(
        request_id=12,
        status=status,
        kind=RequestKind.COMPOSE,
        queue_position=None,
        params={
            "bars": 8,
            "style": "folk",
            "temperature": 0.9,
            "top_p": 0.95,
            "instrument": 73,
            "tempo": None,
            "rng_seed": 5,
        },
        model_version="v3",
        device="cpu",
        worker="w1",
        timings={"generate_s": 0.31, "render_s": 0.2},
        notes={},
        error_user=None,
        seed_name="ode.mid",
        channel_id=1,
        user_discord_id=2,
    )
    values.update(kw)
    return Progress(**values)


def test_progress_lines_name_the_stage():
    assert "position 3" in messages.progress_text(progress(RequestStatus.QUEUED, queue_position=3))
    assert "generating" in messages.progress_text(progress(RequestStatus.GENERATING))
    assert "rendering" in messages.progress_text(progress(RequestStatus.RENDERING))
    failed = progress(RequestStatus.FAILED, error_user="the model is unavailable")
    assert "the model is unavailable" in messages.progress_text(failed)


def test_result_embed_has_parameters_seed_model_timings_and_the_shortened_note():
    embed = messages.result_embed(
        progress(RequestStatus.DONE, notes={"shortened": True}),
        image_filename="motif-12.png",
        left_out=[],
    )
    fields = {f.name: f.value for f in embed.fields}
    assert "ode.mid" in embed.description
    assert fields["Instrument"] == "flute" and fields["Style"] == "folk"
    assert fields["Bars"] == "8" and fields["Random seed"] == "5" and fields["Model"] == "v3"
    assert "generate 0.3 s" in fields["Timings"]
    assert "shortened" in fields["Note"]
    assert embed.image.url == "attachment://motif-12.png"


def test_result_embed_tells_how_the_file_became_the_seed():
    notices = {
        "from_bar": "The seed is bars 1-16; the continuation starts at bar 17.",
        "drums_left_out": "The drums (300 notes) were left out of the seed: Motif continues "
        "pitched parts.",
        "seed_cropped": "The file was too long, so the seed is its first 20 minutes of 31.",
    }
    embed = messages.result_embed(
        progress(RequestStatus.DONE, notes=notices), image_filename=None, left_out=[]
    )
    note = {f.name: f.value for f in embed.fields}["Note"]
    assert note.splitlines() == [notices[k] for k in ("from_bar", "seed_cropped", "drums_left_out")]


def test_a_long_score_says_which_bars_chat_shows_and_where_the_rest_is():
    embed = messages.result_embed(
        progress(RequestStatus.DONE, notes={"score_bars": [24, 64]}),
        image_filename="motif-12-score.png",
        left_out=[],
    )
    note = {f.name: f.value for f in embed.fields}["Note"]
    assert note == "Score: bars 1–24 of 64; the full score is in the PDF and the MusicXML."


def test_a_scores_pages_show_together_and_hide_together_and_the_pdf_comes_first():
    files = [
        Upload("m-score-2.png", b"2", "score-2"),
        Upload("m.png", b"r", "image"),
        Upload("m-score.png", b"1", "score"),
        Upload("m.pdf", b"p", "pdf"),
        Upload("m.musicxml", b"x", "musicxml"),
    ]
    kept, _ = fit_uploads(files, per_file=100)
    assert [u.kind for u in kept] == ["musicxml", "pdf", "image", "score", "score-2"]
    shown = {u.kind: u.spoiler for u in inline_picture(kept, "score")}
    assert shown == {"musicxml": False, "pdf": False, "image": True, "score": False,
                     "score-2": False}  # fmt: skip
    shown = {u.kind: u.spoiler for u in inline_picture(kept, "pianoroll")}
    assert shown["image"] is False and shown["score"] is True and shown["score-2"] is True


def test_variation_temperature_moves_within_the_allowed_range():
    assert varied_temperature(1.0, "hi") == 1.25
    assert varied_temperature(1.0, "lo") == 0.8
    assert varied_temperature(1.9, "hi") == 2.0
    with pytest.raises(BadParams, match="highest"):
        varied_temperature(2.0, "hi")


def test_result_buttons_carry_the_request_id():
    ids = [item.custom_id for item in result_view(12).children]  # type: ignore[attr-defined]
    assert ids == [
        "motif:reroll:12",
        "motif:extend:12",
        "motif:vary:lo:12",
        "motif:vary:hi:12",
        "motif:share:12",
        "motif:rate:up:12",
        "motif:rate:down:12",
    ]


def test_a_finished_run_says_its_candidate_is_already_active():
    from engine.service.admin import RunInfo

    info = RunInfo(
        id=4, status="done", progress={}, metrics={"val_nll": 2.5}, error=None,
        candidate="run4-v1", channel_id=None, loss_curve_key=None,
    )  # fmt: skip
    text = messages.run_final_text(info)
    assert "`run4-v1` passed the quality gate and is now active" in text
    assert "/model activate" not in text and "/model rollback" in text
