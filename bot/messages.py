"""What the bot says: progress lines, result and status embeds, the help text."""

from __future__ import annotations

import time
from typing import Any

import discord

from engine.music import catalog
from engine.service.admin import ModelInfo, RunInfo, Stats
from engine.service.progress import Progress, QueueStatus
from engine.store.records import RequestKind, RequestStatus

COLOUR = discord.Colour.from_rgb(88, 101, 242)

KIND_LABEL = {
    RequestKind.COMPOSE: "continuation",
    RequestKind.REROLL: "reroll",
    RequestKind.EXTEND: "extension",
    RequestKind.VARIATION: "variation",
}


def retry_hint(seconds: float) -> str:
    """A Discord timestamp that counts down in the user's own client."""
    return f"You can try again <t:{int(time.time() + max(1.0, seconds)) + 1}:R>."


def progress_text(p: Progress) -> str:
    rid = p.request_id
    if p.status is RequestStatus.QUEUED:
        where = f" (position {p.queue_position} in the queue)" if p.queue_position else ""
        return f"⏳ Request #{rid} is queued{where}…"
    if p.status is RequestStatus.GENERATING:
        model = f" with model {p.model_version}" if p.model_version else ""
        return f"🎹 Request #{rid}: generating the continuation{model}…"
    if p.status is RequestStatus.RENDERING:
        return f"🔊 Request #{rid}: rendering the audio…"
    if p.status is RequestStatus.DONE:
        return f"✅ Request #{rid} is ready."
    if p.status is RequestStatus.CANCELLED:
        return f"🚫 Request #{rid} was cancelled."
    return failure_text(p)


def quoted(text: str, limit: int = 100) -> str:
    """User-supplied text (a filename, a title) shown inline: in a code span, so no markdown or
    mention renders, without backticks that would end it, and clipped."""
    clean = text.replace("`", "'").replace("\n", " ")
    return f"`{clean[:limit]}{'…' if len(clean) > limit else ''}`"


def restarting_text(request_id: int) -> str:
    """What a request's progress message says when the bot stops before its result is ready."""
    return (
        f"🔄 Motif is restarting. Request #{request_id} keeps going; its result will be posted in "
        "this channel when it is ready."
    )


def failure_text(p: Progress) -> str:
    reason = p.error_user or "something went wrong on our side"
    return f"❌ Request #{p.request_id} failed: {reason}"


def result_content(p: Progress, mention_user_id: int | None = None) -> str:
    who = f"<@{mention_user_id}> " if mention_user_id else ""
    return f"{who}🎶 Here is your {KIND_LABEL.get(p.kind, 'tune')} (request #{p.request_id})."


def _instrument(program: Any) -> str:
    if isinstance(program, int):
        return catalog.PROGRAM_NAMES.get(program, f"GM program {program}")
    return str(program)


def _timings(timings: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("queue_wait_s", "queue"),
        ("generate_s", "generate"),
        ("render_s", "render"),
    ):
        value = timings.get(key)
        if isinstance(value, int | float):
            parts.append(f"{label} {value:.1f} s")
    return ", ".join(parts) or "—"


def result_embed(p: Progress, *, image_filename: str | None, left_out: list[str]) -> discord.Embed:
    params = p.params
    seed = p.seed_name or "none (from scratch)"
    embed = discord.Embed(
        title=f"Motif #{p.request_id}: {KIND_LABEL.get(p.kind, 'tune')}",
        description=f"Seed: **{discord.utils.escape_markdown(seed)}**",
        colour=COLOUR,
    )
    embed.add_field(name="Bars", value=str(params.get("bars", "?")))
    embed.add_field(name="Style", value=params.get("style") or "any")
    embed.add_field(name="Instrument", value=_instrument(params.get("instrument", 0)))
    embed.add_field(
        name="Temperature", value=f"{params.get('temperature', catalog.DEFAULT_TEMPERATURE):g}"
    )
    embed.add_field(name="Top-p", value=f"{params.get('top_p', catalog.DEFAULT_TOP_P):g}")
    tempo = params.get("tempo")
    embed.add_field(name="Tempo", value=f"{tempo:g} BPM" if tempo else "from the seed")
    rng_seed = params.get("rng_seed")
    embed.add_field(name="Random seed", value=str(rng_seed) if rng_seed is not None else "random")
    embed.add_field(name="Model", value=p.model_version or "?")
    embed.add_field(name="Timings", value=_timings(p.timings))
    notes = [str(r) for r in p.notes.get("seed_remarks", [])]
    notes += [p.notes[k] for k in catalog.SEED_NOTICES if isinstance(p.notes.get(k), str)]
    if p.notes.get("shortened"):
        notes.append("The audio was shortened to fit the upload limit; the MIDI file has it all.")
    score_bars = p.notes.get("score_bars")
    if isinstance(score_bars, list) and len(score_bars) == 2:
        notes.append(
            f"Score: bars 1–{score_bars[0]} of {score_bars[1]}; the full score is in the PDF "
            "and the MusicXML."
        )
    if left_out:
        notes.append(f"Not attached (too large for this channel): {', '.join(left_out)}.")
    if notes:
        embed.add_field(name="Note", value="\n".join(notes), inline=False)
    if image_filename:
        embed.set_image(url=f"attachment://{image_filename}")
    embed.set_footer(text="Reroll, extend or vary it with the buttons below.")
    return embed


def history_embed(items: list[Progress]) -> discord.Embed:
    lines = []
    for p in items:
        seed = f" from {discord.utils.escape_markdown(p.seed_name)}" if p.seed_name else ""
        bars = p.params.get("bars", "?")
        lines.append(f"**#{p.request_id}** {p.kind.value}{seed}, {bars} bars: {p.status.value}")
    return _list_embed("Your recent requests", lines, "Nothing yet: try `/compose`.")


def status_embed(q: QueueStatus) -> discord.Embed:
    embed = discord.Embed(title="Motif status", colour=COLOUR)
    embed.add_field(name="Queued", value=str(q.queued))
    embed.add_field(name="Running", value=str(q.running))
    embed.add_field(name="Model", value=q.active_model or "default")
    # counts, never host names: those are for operators
    workers = "\n".join(q.worker_counts) or "none online: requests wait until one starts"
    embed.add_field(name="Workers", value=workers[:1024], inline=False)
    return embed


def stats_embed(s: Stats) -> discord.Embed:
    embed = discord.Embed(title="Motif statistics", colour=COLOUR)
    by_status = ", ".join(f"{k} {v}" for k, v in sorted(s.requests_by_status.items())) or "—"
    embed.add_field(name="Requests", value=f"{s.requests_total} ({by_status})", inline=False)
    embed.add_field(name="Last 24 h", value=str(s.requests_last_day))
    embed.add_field(name="Users", value=str(s.users))
    embed.add_field(name="Shared tunes", value=str(s.tunes_shared))
    embed.add_field(name="Feedback", value=f"👍 {s.thumbs_up} · 👎 {s.thumbs_down}")

    def secs(v: float | None) -> str:
        return f"{v:.2f} s" if v is not None else "—"

    embed.add_field(
        name="Median time",
        value=f"generate {secs(s.median_generate_s)}, render {secs(s.median_render_s)}",
    )
    embed.add_field(name="Active model", value=s.active_model or "default")
    return embed


def models_embed(models: list[ModelInfo]) -> discord.Embed:
    lines = []
    for m in models:
        mark = " ← active" if m.active else ""
        why = f" ({m.reject_reason})" if m.reject_reason else ""
        lines.append(f"`{m.version}` {m.status}{why}, {m.created_at}{mark}")
    return _list_embed(
        "Model versions",
        lines,
        "No model versions recorded yet (workers use the default model).",
        limit=4000,
    )


def _list_embed(title: str, lines: list[str], empty: str, limit: int = 4000) -> discord.Embed:
    """An embed listing whole `lines` up to `limit` characters (Discord's description limit is
    4,096) and how many more there are, or saying `empty` when there are none."""
    embed = discord.Embed(title=title, colour=COLOUR)
    if not lines:
        embed.description = empty
        return embed
    shown: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        line = line if len(line) <= 400 else line[:399] + "…"
        more = f"\n…and {len(lines) - i} more" if i < len(lines) else ""
        if size + len(line) + 1 + len(more) > limit:
            shown.append(more.strip())
            break
        shown.append(line)
        size += len(line) + 1
    embed.description = "\n".join(shown)
    return embed


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def run_progress_text(info: RunInfo) -> str:
    head = f"🏋️ Training run #{info.id}: {info.status}"
    p = info.progress
    parts = []
    if isinstance(p.get("epoch"), int | float):
        parts.append(f"epoch {p['epoch']:.2f}")
    if isinstance(p.get("step"), int) and isinstance(p.get("total_steps"), int):
        parts.append(f"step {p['step']:,}/{p['total_steps']:,}")
    if isinstance(p.get("loss"), int | float):
        parts.append(f"loss {p['loss']:.3f}")
    if isinstance(p.get("tokens_per_s"), int | float):
        parts.append(f"{p['tokens_per_s']:,.0f} tokens/s")
    if isinstance(p.get("eta_s"), int | float):
        parts.append(f"ETA {_duration(p['eta_s'])}")
    return head + (": " + " · ".join(parts) if parts else "…")


RUN_FINISHED = ("done", "rejected", "failed", "cancelled")


def run_final_text(info: RunInfo) -> str:
    if info.status == "done":
        text = f"✅ Training run #{info.id} finished"
        if info.candidate:
            # `retrain` activates a candidate that passes the gate: it is live already
            text += f": `{info.candidate}` passed the quality gate and is now active"
            text += " (`/model rollback` brings back the previous model)"
    elif info.status == "rejected":
        text = f"🚫 Training run #{info.id}: the candidate did not pass the quality gate"
    elif info.status == "cancelled":
        text = f"🛑 Training run #{info.id} was cancelled"
    else:
        text = f"❌ Training run #{info.id} failed: {info.error or 'see the worker log'}"
    shown = {k: v for k, v in info.metrics.items() if isinstance(v, int | float)}
    if shown:
        text += "\n" + ", ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items()))
    return text + "."


HELP_TEXT = """\
**Motif continues your melody.**
• `/compose`: attach a seed (MIDI .mid, ABC .abc or MusicXML .musicxml/.mxl), paste ABC in \
`abc:`, or leave it out; pick style, bars, temperature (lower is safer, higher is wilder), \
instrument, tempo, a random seed for repeatable results, and the picture shown (score or piano roll).
• Right-click a message with a seed file → **Apps → Continue this MIDI**, or mention me in a \
message with a seed file or an ABC tune in a code block.
• Each result brings the MIDI, MusicXML (opens in MuseScore), a PDF of the score, audio, \
the score's first pages and the piano roll.
• Under each result: 🎲 Reroll (same settings, new take), ➕ Extend (continue the result), \
🧊/🔥 Variation (cooler/hotter), 🤝 Share (let Motif learn from it), 👍/👎 feedback.
• ✖️ Cancel under a request still in the queue withdraws it.
• `/history`: your recent requests. `/status`: the queue and the model. \
`/forget`: withdraw everything you shared.
Admins: `/retrain` (`cancel:N` stops run N), `/model list|activate|rollback`, `/stats`.
"""
