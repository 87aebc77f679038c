"""ABC and MusicXML through the real bot and the fake Discord: attachments, `/compose abc:`, a code
block with a mention, the inline picture choice, and hostile XML refused cleanly."""

from __future__ import annotations

import asyncio
import io
import zipfile

import pytest
from sqlalchemy import select

from engine.music.midi import load_seed
from engine.store.db import session_scope
from engine.store.records import Request, Tune
from tests.bot.conftest import discord_harness, queued
from tests.bot.fake_discord import APP_ID, CHANNEL_ID
from tests.bot.test_discord_flows import CALLBACK, CHANNEL_POST, EPHEMERAL, FOLLOWUP, ORIGINAL

pytest.importorskip("music21")  # the parser process needs it; the bot process never imports it

JIG = "X:1\nT:Test Jig\nM:6/8\nL:1/8\nK:Em\nB|EFG BAG|FGA B2B|EFG BAG|FDF E2:|\n"
REEL = "X:2\nT:Test Reel\nM:4/4\nL:1/8\nK:D\nDFAF dFAF|GBdB gBdB|\n"
HOSTILE = (
    b'<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    b"<score-partwise><part-list/><part id='P1'><measure>&b;</measure></part></score-partwise>"
)


def seed_of(settings, request_id: int):  # type: ignore[no-untyped-def]
    from engine.store.artifacts import store_for

    with session_scope(settings.sqlalchemy_url) as s:
        req = s.get(Request, request_id)
        tune = s.get(Tune, req.seed_tune_id)
        return load_seed(store_for(settings.artifact_root).get(tune.midi_key)), tune.name


def mxl(xml: bytes) -> bytes:
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.musicxml", xml)
    return packed.getvalue()


def test_an_abc_attachment_composes_and_the_result_brings_the_score(
    bot_settings, jobs, dispatched, worker
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("jig.abc", JIG.encode())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 4}))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert callback.json == {"type": 5}
            (rid,) = await queued(jobs, dispatched)
            piece, name = seed_of(bot_settings, rid)
            assert name == "jig.abc" and piece.time_signature == (6, 8)
            assert piece.meta["key"] == "4 minor" and len(piece.notes) == 22
            worker.complete(rid)
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert f"motif-{rid}.musicxml" in result.filenames
            assert f"SPOILER_motif-{rid}.png" in result.filenames  # the piano roll, one click
            (embed,) = result.json["embeds"]
            assert embed["image"]["url"] == f"attachment://motif-{rid}-score.png"
            assert "jig.abc" in embed["description"]

    asyncio.run(scenario())


def test_compose_abc_option_on_one_line_with_the_piano_roll_inline(
    bot_settings, jobs, dispatched, worker
):
    """A slash command's text option arrives without line breaks: the tune still reads."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            one_line = JIG.replace("\n", " ")
            h.inject(h.payloads.slash("compose", {"abc": one_line, "image": "pianoroll"}))
            (rid,) = await queued(jobs, dispatched)
            piece, name = seed_of(bot_settings, rid)
            assert name == "pasted.abc" and piece.time_signature == (6, 8)
            assert len(piece.notes) == 22
            assert jobs.progress(rid).params["image"] == "pianoroll"
            worker.complete(rid)
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            (embed,) = result.json["embeds"]
            assert embed["image"]["url"] == f"attachment://motif-{rid}.png"
            assert f"SPOILER_motif-{rid}-score.png" in result.filenames

    asyncio.run(scenario())


def test_the_inline_picture_setting_is_the_default(bot_settings, jobs, dispatched, worker):
    settings = bot_settings.model_copy(update={"inline_image": "pianoroll"})

    async def scenario() -> None:
        async with discord_harness(settings, jobs) as h:
            h.inject(h.payloads.slash("compose", {}))
            (rid,) = await queued(jobs, dispatched)
            worker.complete(rid)
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert result.json["embeds"][0]["image"]["url"] == f"attachment://motif-{rid}.png"

    asyncio.run(scenario())


def test_an_abc_code_block_with_a_mention_takes_the_first_tune_and_says_so(
    bot_settings, jobs, dispatched, worker
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            msg = h.payloads.user_message(
                f"<@{APP_ID}> continue this one\n```abc\n{JIG}\n{REEL}```", [], mention_bot=True
            )
            h.inject_message(msg)
            (reply,) = await h.fake.wait_for("POST", CHANNEL_POST)
            assert "queued" in reply.json["content"]
            (rid,) = await queued(jobs, dispatched)
            piece, _ = seed_of(bot_settings, rid)
            assert piece.time_signature == (6, 8)  # the jig, not the reel
            worker.complete(rid)
            posts = await h.fake.wait_for("POST", CHANNEL_POST, count=2)
            fields = {f["name"]: f["value"] for f in posts[1].json["embeds"][0]["fields"]}
            assert "held 2 tunes" in fields["Note"] and "first" in fields["Note"]
            assert str(posts[1].json["message_reference"]["message_id"]) == msg["id"]

    asyncio.run(scenario())


def test_chord_symbols_and_ornaments_the_seed_loses_are_named_in_the_reply(
    bot_settings, jobs, dispatched, worker
):
    """A session reel with chord symbols, a grace note, a roll and a trill: the continuation
    leaves them out, and the result's note says which (issue #25), not silence."""
    from tests.engine.music.test_notation_terms import CHORDS

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("reel.abc", CHORDS.encode())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 4}))
            (rid,) = await queued(jobs, dispatched)
            worker.complete(rid)
            (result,) = await h.fake.wait_for("POST", FOLLOWUP)
            (embed,) = result.json["embeds"]
            note = {f["name"]: f["value"] for f in embed["fields"]}["Note"]
            assert "Left out of the ABC seed: chord symbols (6: G, C, D7, Am)" in note
            assert "grace notes (1)" in note and "ornaments (2: ~ (roll), trill)" in note

    asyncio.run(scenario())


def test_continue_this_midi_takes_a_compressed_musicxml(bot_settings, jobs, dispatched):
    from engine.music.musicxml import score_xml
    from engine.music.notes import Note, Piece

    xml = score_xml(
        Piece(tuple(Note(float(i), 1.0, 60 + i % 8) for i in range(12)), time_signature=(3, 4)),
        None or Piece(()),
        key=(0, "major"),
    ).encode()

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            target = h.payloads.user_message(
                "from MuseScore", [h.payloads.attachment("waltz.mxl", mxl(xml))]
            )
            h.inject(h.payloads.message_command("Continue this MIDI", target))
            (rid,) = await queued(jobs, dispatched)
            piece, name = seed_of(bot_settings, rid)
            assert name == "waltz.mxl" and piece.time_signature == (3, 4)
            assert len(piece.notes) == 12

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        ("bomb.musicxml", HOSTILE, "declares XML entities"),
        ("bomb.mxl", mxl(HOSTILE), "declares XML entities"),
        ("broken.abc", b"this is not a tune", "could not read this ABC"),
    ],
)
def test_hostile_or_broken_notation_is_refused_ephemerally_and_nothing_is_written(
    bot_settings, jobs, dispatched, filename, data, expected
):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment(filename, data)
            h.inject(h.payloads.slash("compose", {"seed": seed}))
            await h.fake.wait_for("DELETE", ORIGINAL)  # the "thinking…" placeholder goes
            (answer,) = await h.fake.wait_for("POST", FOLLOWUP)
            assert expected in answer.json["content"]
            assert answer.json["flags"] == EPHEMERAL
            assert dispatched == []
            with session_scope(bot_settings.sqlalchemy_url) as s:
                assert s.scalars(select(Tune)).first() is None

    asyncio.run(scenario())


def test_a_file_and_abc_at_once_is_refused(bot_settings, jobs, dispatched):
    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("jig.abc", JIG.encode())
            h.inject(h.payloads.slash("compose", {"seed": seed, "abc": JIG}))
            (callback,) = await h.fake.wait_for("POST", CALLBACK)
            assert "not both" in callback.json["data"]["content"]
            assert callback.json["data"]["flags"] == EPHEMERAL
            assert not h.fake.find("GET", rf"/cdn/attachments/{CHANNEL_ID}/.*")

    asyncio.run(scenario())


def test_an_abc_seed_end_to_end_with_each_worker(bot_settings, jobs, dispatched, any_worker):
    """With engine.worker.pipeline's real worker too: audio, MIDI, MusicXML, score and piano roll."""

    async def scenario() -> None:
        async with discord_harness(bot_settings, jobs) as h:
            seed = h.payloads.attachment("jig.abc", JIG.encode())
            h.inject(h.payloads.slash("compose", {"seed": seed, "bars": 2, "rng_seed": 3}))
            (rid,) = await queued(jobs, dispatched)
            status = await asyncio.to_thread(any_worker.complete, rid)
            assert status.value == "done"
            (result,) = await h.fake.wait_for("POST", FOLLOWUP, timeout=30)
            assert sorted(result.filenames) == sorted(
                [
                    f"motif-{rid}.mid",
                    f"motif-{rid}.musicxml",
                    f"motif-{rid}.ogg",
                    f"SPOILER_motif-{rid}.png",
                    f"motif-{rid}-score.png",
                ]
                # the real render stage also writes the whole score as a PDF
                + ([f"motif-{rid}.pdf"] if any_worker.writes_pdf else [])
            )
            assert result.json["embeds"][0]["image"]["url"] == f"attachment://motif-{rid}-score.png"

    asyncio.run(scenario())
