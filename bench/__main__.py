"""`python -m bench [--quick] [--only NAME] [--json out.json]`: every speed figure in one run,
printed as one Markdown table of medians with the machine it ran on (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch

from bench import workload

log = logging.getLogger("bench")

PARTS = ("generation", "batch", "e2e", "render", "train", "memory", "discord", "notation")


def plan(quick: bool, threads: int, model: str | None, corpus: str | None
         ) -> dict[str, Callable[[], dict[str, Any]]]:  # fmt: skip
    """Each part as a call of its module's `run` (imported late: each is light alone)."""
    from bench import (
        batch_bench,
        discord_bench,
        e2e_bench,
        generation_bench,
        memory_bench,
        notation_bench,
        render_bench,
        train_bench,
    )

    if quick:
        return {
            "generation": lambda: generation_bench.run(repeats=2, bars=4, n_seeds=2, decode_steps=50,
                                                       model_path=model, corpus_path=corpus),
            "batch": lambda: batch_bench.run(repeats=2, sizes=(1, 4, 8), bars=2, model_path=model,
                                             corpus_path=corpus),
            "e2e": lambda: e2e_bench.run(repeats=1, bars=(4,), music_s=None, threads=threads,
                                         model_path=model),
            "render": lambda: render_bench.run(repeats=1),
            "train": lambda: train_bench.run(repeats=2, steps=1, batch_size=8, model_path=model,
                                             corpus_path=corpus),
            "memory": lambda: memory_bench.run(batch=8, bars=2, threads=threads, model_path=model),
            "discord": lambda: discord_bench.run(requests=3, threads=threads, model_path=model),
            "notation": lambda: notation_bench.run(repeats=1, bars=(16,)),
        }  # fmt: skip
    return {
        "generation": lambda: generation_bench.run(model_path=model, corpus_path=corpus),
        "batch": lambda: batch_bench.run(model_path=model, corpus_path=corpus),
        "e2e": lambda: e2e_bench.run(threads=threads, model_path=model),
        "render": lambda: render_bench.run(repeats=5),
        "train": lambda: train_bench.run(model_path=model, corpus_path=corpus),
        "memory": lambda: memory_bench.run(threads=threads, model_path=model),
        "discord": lambda: discord_bench.run(requests=20, threads=threads, model_path=model),
        "notation": lambda: notation_bench.run(repeats=7),
    }


# --- the table ----------------------------------------------------------------------------------
Row = tuple[str, str, str, str, str, str, str]  # part, figure, value, reference, ratio, target, met


def _n(x: Any, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:,.{digits}f}"


def _s(x: Any) -> str:
    return "–" if x is None else f"{x:.3f} s" if x < 1 else f"{x:.2f} s"


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def rows_generation(r: dict[str, Any]) -> list[Row]:
    p = "1 generation"
    rows: list[Row] = [
        (p, f"notes/s, B=1, {r['seeds']} seeds x {r['bars']} bars: Motif `continue_seed` vs "
            f"{r['baseline']}", _n(r["motif_notes_per_s"], 1), _n(r["baseline_notes_per_s"], 1),
         f"{r['ratio']:.1f}x", "≥ 20x", _met(r["ratio"] >= r["ratio_target"])),
        (p, "decode steps/s, B=1: Motif raw (`BatchDecoder.step`: LSTM layers + attention) vs baseline "
            f"(one 100-symbol window; seeds' notes per onset {r['seed_notes_per_onset']})",
         _n(r["decode_steps_per_s"]), _n(r["baseline_steps_per_s"], 1),
         f"{r['decode_steps_per_s'] / r['baseline_steps_per_s']:.1f}x", "", ""),
        (p, "Motif network notes/s, B=1 (step + 4 heads, no sampling)",
         _n(r["network_notes_per_s"]), "", "", "", ""),
    ]  # fmt: skip
    per_note = 1000 / r["motif_notes_per_s"]
    network = 1000 / r["network_notes_per_s"]
    encoder = r["encode_seed_ms"] * r["seeds"] / r["notes_per_round"]
    rows.append(
        (p, f"Motif ms per note at B=1: network {network:.2f} + encoder share {encoder:.2f} "
            f"(one {r['encode_seed_notes']}-note seed: {r['encode_seed_ms']:.1f} ms) + sampling "
            f"and grammar {per_note - network - encoder:.2f}", f"{per_note:.2f} ms", "", "", "", "")
    )  # fmt: skip
    if "matmul_floor_ms" in r:
        floor = r["matmul_floor_ms"]
        ceiling = 1000 / floor / r["baseline_notes_per_s"]
        rows.append(
            (p, f"floor: one note's matrix products alone at B=1 ({r['weights_per_note_mib']:.1f} "
                f"MiB of weights read per note); ratio ceiling = (1000 / floor) / baseline notes/s",
             f"{floor:.3f} ms", "", f"≤ {ceiling:.1f}x", "", "")
        )  # fmt: skip
    if "tokens_remi_tokens_per_note" in r:
        rows.append(
            (p, f"decode steps per note: Motif (measured) vs miditok REMI tokens/note "
                f"({r['tokens_pieces']} pieces, {r['tokens_notes']} notes)",
             f"{r['motif_steps_per_note']:.2f}", f"{r['tokens_remi_tokens_per_note']:.2f}",
             f"{r['tokens_remi_tokens_per_note'] / r['motif_steps_per_note']:.1f}x fewer", "", "")
        )  # fmt: skip
        rows.append((p, "  (for reference: miditok CPWord compound steps/note)", "",
                     f"{r['tokens_cpword_tokens_per_note']:.2f}", "", "", ""))  # fmt: skip
    else:
        rows.append((p, "REMI tokens per note", "not measured", r.get("tokens_error", ""),
                     "", "", ""))  # fmt: skip
    return rows


def rows_batch(r: dict[str, Any]) -> list[Row]:
    p = "2 batch"
    rows: list[Row] = []
    for b in r["sizes"]:
        how = (
            f"each of {r['b1_alone']} requests alone, mean per request"
            if b == 1
            else "one `continue_batch` call"
        )
        rows.append(
            (p, f"B={b} ({how}; {r['bars']} bars each, {r[f'b{b}_notes']} notes, "
                f"{r[f'b{b}_steps']:.0f} steps): wall / aggregate notes/s",
             f"{_s(r[f'b{b}_wall_s'])} / {_n(r[f'b{b}_notes_per_s'])}", "", "", "", "")
        )  # fmt: skip
    rows.append((p, f"{r['ratio_label']} (per decode step: {r['per_step_ratio']:.2f}x)", "", "",
                 f"{r['ratio']:.2f}x", "≤ 4x", _met(r["ratio"] <= r["ratio_target"])))  # fmt: skip
    return rows


def rows_e2e(r: dict[str, Any]) -> list[Row]:
    p = "3 end to end"
    rows: list[Row] = []
    for broker in ("filesystem", "redis"):
        if f"queue_{broker}_s" in r:
            rows.append((p, f"queue overhead, {broker} broker: submit → `generating` "
                            f"(JobService.compose alone {_s(r[f'submit_{broker}_s'])})",
                         _s(r[f"queue_{broker}_s"]), "", "", "", ""))  # fmt: skip
    for note in r.get("notes", []):
        rows.append((p, note, "not measured", "", "", "", ""))
    for name, v in r.items():
        if not isinstance(v, dict) or "done_s" not in v:
            continue
        label = (
            f"`motif compose` {name}"
            if name.endswith("bars")
            else (f"{name} end to end ({v['bars']} bars = {v['music_s']:.1f} s continuation)")
        )
        target = met = ""
        if not name.endswith("bars"):
            target, met = "< 15 s", _met(v["done_s"] < r["music_target_s"])
        rows.append((p, f"{label}: submit → done, warm worker (generate {_s(v['generate_s'])}, "
                        f"render {_s(v['render_s'])}, {_n(v['notes'])} notes, audio "
                        f"{v['audio_s']:.1f} s incl. seed)", _s(v["done_s"]), "", "", target, met))  # fmt: skip
    return rows


def rows_render(r: dict[str, Any]) -> list[Row]:
    p = "4 render"
    rows: list[Row] = [
        (p, f"real-time factor, {r['music_s']:.0f} s 4-voice piano: ours ({r['backend']}, reused) "
            f"vs `fluidsynth -F`", f"{_n(r['ours_rtf'], 1)}x", f"{_n(r.get('cli_rtf'), 1)}x",
         f"{r['rtf_ratio']:.2f}" if "rtf_ratio" in r else "–", "≥ 1",
         _met(r.get("rtf_ratio", 0) >= 1) if "rtf_ratio" in r else ""),
        (p, f"whole audio + picture path for {r['music_s']:.0f} s, after vs before (render "
            f"{_s(r['render_s'])} vs {_s(r['before_render_s'])}, loudness {_s(r['loudness_s'])} "
            f"vs {_s(r['before_loudness_s'])} pyloudnorm, encode {_s(r['encode_s'])} vs "
            f"{_s(r['before_encode_s'])}, piano roll {_s(r['pianoroll_s'])} Pillow vs "
            f"{_s(r['before_pianoroll_s'])} matplotlib)", _s(r["pipeline_s"]),
         _s(r["before_pipeline_s"]), f"{r['before_pipeline_s'] / r['pipeline_s']:.1f}x faster",
         f"≤ {r['pipeline_target_s']:.2f} s", _met(r["pipeline_s"] <= r["pipeline_target_s"])),
        (p, "requests/s per render worker (one process, the whole path above), after vs before",
         f"{r['requests_per_s']:.2f}", f"{r['before_requests_per_s']:.2f}",
         f"{r['requests_per_s'] / r['before_requests_per_s']:.1f}x", "", ""),
    ]  # fmt: skip
    ideas = r.get("loudness_ideas", {})
    ref = ideas.get("pyloudnorm")
    for name, v in ideas.items():
        if name != "pyloudnorm" and ref:
            rows.append((p, f"loudness of the same audio: {name} vs pyloudnorm (LU apart: "
                            f"{v['lu_from_pyloudnorm']:+.4f})", _s(v["s"]), _s(ref["s"]),
                         f"{ref['s'] / v['s']:.1f}x faster", "± 0.1 LU",
                         _met(abs(v["lu_from_pyloudnorm"]) <= 0.1)))  # fmt: skip
    for note in r.get("notes", []):
        rows.append((p, note, "", "", "", "", ""))
    return rows


def rows_train(r: dict[str, Any]) -> list[Row]:
    p = "5 training"
    rows: list[Row] = [
        (p, f"training notes/s ({r['batch']}, {r['steps_per_round']} steps/round), fp32 (before): "
            f"Motif step vs bare nn.LSTM seq2seq ({r['motif_params'] / 1e6:.1f} M vs "
            f"{r['bare_params'] / 1e6:.1f} M params)",
         _n(r["motif_notes_per_s"]), _n(r["bare_notes_per_s"]), f"{r['ratio']:.2f}", "≥ 0.9",
         _met(r["ratio"] >= r["ratio_target"])),
    ]  # fmt: skip
    if "bf16_speedup" in r:
        native = "AMX/AVX-512 BF16" if r["native_bf16"] else "no native bf16"
        rows += [
            (p, f"`--cpu-bf16` (after; {native}): Motif step vs bare nn.LSTM, both bf16 autocast",
             _n(r["motif_bf16_notes_per_s"]), _n(r["bare_bf16_notes_per_s"]),
             f"{r['ratio_bf16']:.2f}", "≥ 0.9", _met(r["ratio_bf16"] >= r["ratio_target"])),
            (p, f"Motif training notes/s, after vs before (bf16 / fp32, {r['threads']} thread(s); "
                f"targets fill {r['target_occupancy']:.0%} of the padded batch)",
             _n(r["motif_bf16_notes_per_s"]), _n(r["motif_notes_per_s"]),
             f"{r['bf16_speedup']:.2f}x", "≥ 2x", _met(r["bf16_speedup"] >= r["bf16_speedup_target"])),
        ]  # fmt: skip
    return rows


def rows_memory(r: dict[str, Any]) -> list[Row]:
    stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages_mib"].items())
    served = r["stages_mib"][f"batch of {r['batch']} decoded"]
    return [
        ("6 memory", f"worker peak RSS (VmHWM) after loading the model and decoding a batch of "
                     f"{r['batch']} (stages, MiB: {stages}; peak with a render "
                     f"{r['peak_mib']:.0f} MiB)", f"{served:.0f} MiB", "", "", "", ""),
    ]  # fmt: skip


def rows_discord(r: dict[str, Any]) -> list[Row]:
    p = "7 discord"
    rows: list[Row] = []
    before = next(iter(r["setups"].values()))
    for name, v in r["setups"].items():
        stages = ", ".join(f"{k} {v[k + '_s']:.3f}" for k in (
            "intake", "queueing", "generation", "render hand-off", "rendering", "polling",
            "upload"))  # fmt: skip
        rows.append((p, f"interaction → files posted, {r['bars']} bars, {v['n']} requests, {name}: "
                        f"median (p95 {_s(v['p95_s'])}; stage medians, s: {stages})",
                     _s(v["median_s"]), _s(before["median_s"]) if v is not before else "",
                     f"{before['median_s'] / v['median_s']:.2f}x" if v is not before else "",
                     f"≤ {r['median_target_s']:.1f} s, polling ≤ {r['polling_target_s']:.1f} s",
                     _met(v["median_s"] <= r["median_target_s"]
                          and v["polling_s"] <= r["polling_target_s"])))  # fmt: skip
    for note in r.get("notes", []):
        rows.append((p, note, "", "", "", "", ""))
    return rows


def rows_notation(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, f in r.items():
        if not isinstance(f, dict):
            continue
        sixteen = name.endswith(" 16 bars")
        cairo = f", cairosvg's PNG {_s(f['cairo_s'])}" if "cairo_s" in f else ""
        rows.append(
            ("8 notation", f"score per request, {name} ({f['notes']} notes): MusicXML "
                           f"{_s(f['xml_s'])} + verovio {_s(f['engrave_s'])} + resvg PNG "
                           f"{_s(f['png_s'])}{cairo} ({f['png_bytes'] / 1024:.0f} KiB); beside: "
                           f"render {_s(f['render_s'])}, OGG encode {_s(f['encode_s'])}, piano "
                           f"roll {_s(f['pianoroll_s'])}",
             _s(f["score_s"]), "", "", "≤ 0.2 s" if sixteen else "",
             _met(f["score_s"] <= r["target_16_bars_s"]) if sixteen else "")
        )  # fmt: skip
    for note in r.get("notes", []):
        rows.append(("8 notation", note, "", "", "", "", ""))
    return rows


ROWS = {"generation": rows_generation, "batch": rows_batch, "e2e": rows_e2e,
        "render": rows_render, "train": rows_train, "memory": rows_memory,
        "discord": rows_discord, "notation": rows_notation}  # fmt: skip


def table(results: dict[str, Any], device: dict[str, Any], end_load: list[float],
          labels: dict[str, str], quick: bool) -> str:  # fmt: skip
    head = ["part", "figure", "value", "reference", "ratio", "target", "met"]
    lines = [
        f"**Motif bench** ({'quick smoke run' if quick else 'full run'}), "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC — medians; side-by-side figures interleaved",
        "",
        f"- device: {device['cpu']}, {device['cores']} cores; torch {device['torch']}, "
        f"{device['torch_threads']} thread(s)",
        f"- load average (1/5/15 min): {'/'.join(str(x) for x in device['loadavg_1_5_15'])} at "
        f"start, {'/'.join(str(x) for x in end_load)} at end",
        *[f"- {k}: {v}" for k, v in labels.items()],
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for name, r in results.items():
        if "error" in r:
            rows = [(name, f"failed: {r['error']}", "not measured", "", "", "", "")]
        else:
            rows = ROWS[name](r)
        for row in rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller sizes (smoke run)")
    p.add_argument("--only", action="append", choices=PARTS, metavar="NAME",
                   help=f"run only this part (repeatable): {', '.join(PARTS)}")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads here and in worker subprocesses (default 1: stable "
                        "ratios on a shared machine)")  # fmt: skip
    p.add_argument("--model", help="checkpoint to measure (default: the shipped default model, "
                                   "or a fresh default-size model when it is absent)")  # fmt: skip
    p.add_argument("--corpus", help="corpus .npz (default: the shipped corpus, or synthetic tunes)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kombu").setLevel(logging.ERROR)  # "no hostname" for filesystem://

    torch.set_num_threads(args.threads)
    device = workload.device_info()
    print(f"bench: {device['cpu']}, torch threads {device['torch_threads']}, "
          f"load average {device['loadavg_1_5_15']}", flush=True)  # fmt: skip
    choice = workload.motif_model(args.model)
    labels = {"model": choice.label, "music": workload.music_source(args.corpus)}
    del choice
    todo = plan(args.quick, args.threads, args.model, args.corpus)
    results: dict[str, Any] = {}
    for name in PARTS:
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        try:
            results[name] = todo[name]()
        except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others
            log.error("part %s failed:\n%s", name, traceback.format_exc())
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        results[name]["wall_s"] = time.perf_counter() - t0
        print(f"bench: {name} done in {results[name]['wall_s']:.0f} s, load average "
              f"{[round(x, 2) for x in os.getloadavg()]}", flush=True)  # fmt: skip
    end_load = [round(x, 2) for x in os.getloadavg()]
    text = table(results, device, end_load, labels, args.quick)
    print()
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(workload.plain({"device": device, "load_at_end": end_load, "quick": args.quick,
                                      "threads": args.threads, "labels": labels, "parts": results,
                                      "table": text}), fh, indent=2)  # fmt: skip
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
