"""`python -m bench.gpu [--out DIR]`: the one-shot check for the day a GPU is lent, in under five
minutes, installing nothing: decoding at B = 1, 8, 32, 128 (whole requests and the network's own
step), fp32 against bf16 decoding, CUDA-graph replay of one decode step, a training step with AMP
against fp32, and the end-to-end request path through a real `motif worker` on the GPU. Writes
`gpu.json` and `gpu.md` (one Markdown table) into DIR and prints the table.

`--dry-run` runs the same sections on the CPU at toy sizes (CI runs it: tests/bench/test_gpu.py),
so the script's logic is checked without a GPU. Every section records its own failure and the
run goes on; sections left when the time budget is spent are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import workload

log = logging.getLogger(__name__)

BUDGET_S = 270.0  # leaves half a minute of the five for start-up and writing
SIZES = (1, 8, 32, 128)


class Run:
    """The device, the sizes and the clock shared by the sections."""

    def __init__(self, dry: bool, model_path: str | None, budget_s: float) -> None:
        self.dry = dry
        self.device = torch.device("cpu" if dry else "cuda")
        self.sizes = (1, 2) if dry else SIZES
        self.bars = 1 if dry else 8
        self.repeats = 1 if dry else 3
        self.steps = 4 if dry else 64
        self.started = time.perf_counter()
        self.budget_s = budget_s
        if dry:
            self.lm = workload.fresh_model(d_embed=16, hidden=32, layers=1)
            self.model_label = "toy model (dry run)"
            self.model_path = model_path
        else:
            choice = workload.motif_model(model_path)
            self.lm, self.model_label = choice.lm, choice.label
            self.model_path = str(choice.path) if choice.path else None
        self.lm.model.to(self.device).eval()

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn: Callable[[], Any], repeats: int | None = None) -> tuple[float, Any]:
        """Median seconds of `repeats` calls (after one warm call), and the last result."""
        out = fn()
        self.sync()
        times = []
        for _ in range(repeats or self.repeats):
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out


# --- sections ------------------------------------------------------------------------------------
def decode_requests(run: Run) -> dict[str, Any]:
    """Whole requests through `continue_batch` (sampling, grammar, host reads) at each B."""
    from bench.batch_bench import requests
    from engine.model.generate.continuation import continue_batch

    reqs, music = requests(max(run.sizes), run.bars)
    out: dict[str, Any] = {"music": music, "bars": run.bars}
    for b in run.sizes:
        wall, pieces = run.timed(lambda b=b: continue_batch(run.lm, reqs[:b]))
        notes = sum(len(p.notes) for p in pieces)
        out[f"b{b}"] = {"wall_s": wall, "notes": notes, "notes_per_s": notes / wall}
    return out


def _step_loop(run: Run, model: torch.nn.Module, b: int) -> tuple[Callable[[], Any], Any]:
    """`run.steps` decode steps with the four heads at batch `b` (the network's cost per note,
    no sampling), and the decoder it steps."""
    from engine.model.events import POSITION, SHIFT
    from engine.model.generate.batch_decoder import batch_decoder

    dtype = next(model.parameters()).dtype
    cfg = run.lm.config
    g = torch.Generator().manual_seed(b)
    seed_len = 8 if run.dry else 64
    sizes = (cfg.n_shift, cfg.n_pitch, cfg.n_duration, cfg.n_velocity, cfg.n_position)
    events = torch.stack([torch.randint(0, n, (b, seed_len), generator=g) for n in sizes], -1)
    events = events.to(run.device)  # (B, S, 5)
    style = torch.zeros(b, dtype=torch.int64, device=run.device)
    key = torch.zeros(b, dtype=torch.int64, device=run.device)
    with torch.no_grad():
        memory = model.encode(events, torch.full((b,), seed_len, device=run.device), style, key)
        decoder = batch_decoder(model, memory, style)
    prev = decoder.events(events[:, -1])  # (B, 7)
    offsets = decoder.offsets
    chosen = [prev[:, [SHIFT, POSITION]], *(prev[:, f : f + 1] - offsets[f] for f in (1, 2))]
    assert dtype in (torch.float32, torch.bfloat16, torch.float16)

    @torch.no_grad()
    def loop() -> torch.Tensor:
        for _ in range(run.steps):
            x = decoder.step(prev)  # (B, 4H)
            for field in range(4):
                logits = decoder.logits(field, x)
                if field < 3:
                    x = decoder.choose(field, x, chosen[field])
        return logits

    return loop, decoder


def decode_network(run: Run) -> dict[str, Any]:
    """The network's own decode step (+ heads) per B, fp32 and bf16 weights side by side; the
    bf16 logits' largest difference from fp32 (relative to the logits' scale)."""
    import copy

    fp32 = run.lm.model
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    out: dict[str, Any] = {"steps": run.steps}
    for b in run.sizes:
        loops = {name: _step_loop(run, m, b)[0] for name, m in (("fp32", fp32), ("bf16", bf16))}
        row: dict[str, Any] = {}
        logits = {}
        for name, loop in loops.items():
            wall, logits[name] = run.timed(loop)
            row[f"{name}_ms_per_step"] = 1000 * wall / run.steps
            row[f"{name}_notes_per_s"] = b * run.steps / wall
        scale = float(logits["fp32"].abs().max())
        row["bf16_max_rel_diff"] = float(
            (logits["bf16"].float() - logits["fp32"]).abs().max()
        ) / max(scale, 1e-9)
        row["bf16_speedup"] = row["fp32_ms_per_step"] / row["bf16_ms_per_step"]
        out[f"b{b}"] = row
    return out


def cuda_graphs(run: Run) -> dict[str, Any]:
    """One decode step (+ heads) captured as a CUDA graph and replayed, against the same step
    launched eagerly. Timing only: a replay reads the captured state, it does not advance it, so
    this measures what launching costs, not a decoder built on graphs (Motif has none yet)."""
    if run.device.type != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    out: dict[str, Any] = {}
    for b in run.sizes:
        one = Run.__new__(Run)
        one.__dict__.update(run.__dict__)
        one.steps = 1
        step, _ = _step_loop(one, run.lm.model, b)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        n = 200
        eager, _ = run.timed(lambda step=step, n=n: [step() for _ in range(n)])
        replay, _ = run.timed(lambda graph=graph, n=n: [graph.replay() for _ in range(n)])
        out[f"b{b}"] = {"eager_ms_per_step": 1000 * eager / n,
                        "graph_ms_per_step": 1000 * replay / n,
                        "speedup": eager / replay}  # fmt: skip
    return out


def train_amp(run: Run) -> dict[str, Any]:
    """engine.model.train.step.train_step on the same batches: fp32 against AMP (bf16 where supported,
    else fp16 with loss scaling), a fresh model of the default size (a toy one when dry)."""
    import numpy as np

    from engine.model.events import SHIFT
    from engine.model.network import IGNORE, MotifSeq2Seq
    from engine.model.train.config import TrainConfig
    from engine.model.train.data import encode_pieces, sample_batch
    from engine.model.train.step import make_optimizer, train_step

    cfg = TrainConfig(batch_size=4 if run.dry else 64)
    sizes = {"d_embed": 16, "hidden": 32, "layers": 1} if run.dry else {}
    lm = workload.fresh_model(**sizes)
    pieces, music = workload.music(16 if run.dry else 256)
    data = encode_pieces(lm.codec, pieces)
    rng = np.random.default_rng(0)
    steps = 2 if run.dry else 10
    batches = [{k: v.to(run.device) for k, v in sample_batch(rng, data, lm.codec, cfg).items()}
               for _ in range(steps)]  # fmt: skip
    notes = sum(int((b["target"][..., SHIFT] != IGNORE).sum()) for b in batches)
    if run.device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        amp = torch.bfloat16
    out: dict[str, Any] = {"batch": cfg.batch_size, "steps": steps, "music": music,
                           "amp_dtype": str(amp).removeprefix("torch.")}  # fmt: skip
    for name, dtype in (("fp32", None), ("amp", amp)):
        torch.manual_seed(0)
        model = MotifSeq2Seq(lm.config).to(run.device).train()
        optimizer = make_optimizer(model, cfg, run.device)
        scaler = torch.amp.GradScaler(run.device.type, enabled=dtype is torch.float16)

        def rnd(model=model, optimizer=optimizer, scaler=scaler, dtype=dtype) -> float:
            losses = [train_step(model, b, optimizer, scaler, amp_dtype=dtype) for b in batches]
            return float(torch.stack(losses).mean())

        wall, loss = run.timed(rnd, repeats=1 if run.dry else 2)
        out[name] = {"notes_per_s": notes / wall, "mean_loss": loss}
    out["speedup"] = out["amp"]["notes_per_s"] / out["fp32"]["notes_per_s"]
    return out


def end_to_end(run: Run) -> dict[str, Any]:
    """A real `motif worker` subprocess on this device (SQLite, filesystem broker), warmed by one
    request: submit → done for `bars`-bar requests with the README seed."""
    from bench.e2e_bench import Worker, _settings
    from engine.model.checkpoint import save_checkpoint

    seed = workload.EXAMPLE_SEED.read_bytes()
    with workload.temp_dir("motif-bench-gpu-") as tmp:
        model_file = run.model_path
        if model_file is None:
            lm = run.lm
            model_file = str(save_checkpoint(Path(tmp) / "model.pt", lm.model.cpu(), lm.config,
                                             lm.codec.config, {"version": "bench-gpu"}))  # fmt: skip
            lm.model.to(run.device)
        settings = _settings(Path(tmp) / "w", Path(model_file)).model_copy(
            update={"device": run.device.type}
        )
        worker = Worker("gpu" if not run.dry else "dry", settings, threads=1)
        worker.start()
        try:
            worker.wait_ready(timeout=180)
            worker.compose(run.bars, seed)  # warm
            runs = [worker.compose(run.bars, seed) for _ in range(1 if run.dry else 5)]
        finally:
            worker.stop()
    return {
        "device": run.device.type,
        "bars": run.bars,
        "requests": len(runs),
        "done_s": statistics.median(r["done_s"] for r in runs),
        "queue_s": statistics.median(r["queue_s"] for r in runs),
        "generate_s": statistics.median(r["generate_s"] for r in runs),
        "render_s": statistics.median(r["render_s"] for r in runs),
    }


SECTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "decode_requests": decode_requests,
    "decode_network": decode_network,
    "cuda_graphs": cuda_graphs,
    "train_amp": train_amp,
    "end_to_end": end_to_end,
}
# what each section needs of the budget before it starts (seconds, GPU run); else skipped
NEEDS_S = {"decode_requests": 20, "decode_network": 20, "cuda_graphs": 10, "train_amp": 30,
           "end_to_end": 90}  # fmt: skip


# --- the table -----------------------------------------------------------------------------------
def _f(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def _batches(r: dict[str, Any]) -> list[str]:
    return [k for k in r if k[0] == "b" and k[1:].isdigit()]


def markdown(result: dict[str, Any]) -> str:
    d = result["device"]
    lines = [
        f"**Motif GPU check** ({'dry run on the CPU' if result['dry_run'] else 'CUDA'}), "
        f"{result['when']}, {result['wall_s']:.0f} s",
        "",
        f"- device: {d['name']}; torch {d['torch']}, CUDA {d['cuda']}; model: {result['model']}",
        "",
        "| section | figure | value | reference | ratio |",
        "|---|---|---|---|---|",
    ]
    s = result["sections"]

    def row(section: str, figure: str, value: str, ref: str = "", ratio: str = "") -> None:
        lines.append(f"| {section} | {figure} | {value} | {ref} | {ratio} |")

    for name, r in s.items():
        if "error" in r or "skipped" in r:
            row(name, "failed" if "error" in r else "skipped", r.get("error") or r["skipped"])
    if "error" not in s.get("decode_requests", {"error": 1}):
        r = s["decode_requests"]
        one = r["b1"]["notes_per_s"]
        for b in _batches(r):
            v = r[b]
            row("decode", f"`continue_batch` {b[1:]} requests x {r['bars']} bars: wall / notes/s",
                f"{v['wall_s']:.3f} s / {_f(v['notes_per_s'], 0)}", f"B=1 {_f(one, 0)} notes/s",
                f"{v['notes_per_s'] / one:.1f}x")  # fmt: skip
    if "error" not in s.get("decode_network", {"error": 1}):
        r = s["decode_network"]
        for b in _batches(r):
            v = r[b]
            row("decode fp32 vs bf16", f"network step + heads, B={b[1:]}, ms/step (bf16 logits "
                f"within {v['bf16_max_rel_diff']:.1e} of fp32, relative)",
                f"bf16 {v['bf16_ms_per_step']:.3f}", f"fp32 {v['fp32_ms_per_step']:.3f}",
                f"{v['bf16_speedup']:.2f}x")  # fmt: skip
    if "error" not in s.get("cuda_graphs", {"error": 1}) and "skipped" not in s["cuda_graphs"]:
        for b in _batches(s["cuda_graphs"]):
            v = s["cuda_graphs"][b]
            row("CUDA graphs", f"one decode step + heads, B={b[1:]}, ms/step: graph replay vs "
                "eager", f"{v['graph_ms_per_step']:.3f}", f"{v['eager_ms_per_step']:.3f}",
                f"{v['speedup']:.2f}x")  # fmt: skip
    if "error" not in s.get("train_amp", {"error": 1}):
        r = s["train_amp"]
        row("training", f"`train_step` notes/s, batch {r['batch']}: AMP ({r['amp_dtype']}) vs "
            f"fp32 (mean loss {r['amp']['mean_loss']:.3f} vs {r['fp32']['mean_loss']:.3f})",
            _f(r["amp"]["notes_per_s"], 0), _f(r["fp32"]["notes_per_s"], 0),
            f"{r['speedup']:.2f}x")  # fmt: skip
    if "error" not in s.get("end_to_end", {"error": 1}):
        r = s["end_to_end"]
        row("end to end", f"real worker on {r['device']}, {r['bars']} bars, median of "
            f"{r['requests']}: submit → done (queue {r['queue_s']:.3f} s, generate "
            f"{r['generate_s']:.3f} s, render {r['render_s']:.3f} s)", f"{r['done_s']:.3f} s")  # fmt: skip
    return "\n".join(lines)


def device_facts(device: torch.device) -> dict[str, Any]:
    facts: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        facts.update(name=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                     capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported())  # fmt: skip
    else:
        facts.update(name=f"{workload.cpu_model()} (CPU)")
    return facts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="var/bench-gpu", help="folder for gpu.json and gpu.md")
    p.add_argument("--dry-run", action="store_true", help="the same sections on the CPU, toy sizes")
    p.add_argument("--model", help="checkpoint (default: the shipped default model)")
    p.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these")
    p.add_argument("--budget-s", type=float, default=BUDGET_S)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kombu").setLevel(logging.ERROR)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu: no CUDA device here (torch.cuda.is_available() is False); "
              "--dry-run checks the script on the CPU")  # fmt: skip
        return 2
    torch.set_num_threads(1 if args.dry_run else torch.get_num_threads())
    t0 = time.perf_counter()
    run = Run(args.dry_run, args.model, args.budget_s)
    sections: dict[str, dict[str, Any]] = {}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        if not args.dry_run and run.left_s() < NEEDS_S[name]:
            sections[name] = {"skipped": f"time budget: {run.left_s():.0f} s left"}
            continue
        started = time.perf_counter()
        print(f"bench.gpu: {name} ...", flush=True)
        try:
            sections[name] = fn(run)
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others
            log.exception("section %s failed", name)
            sections[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        sections[name]["section_s"] = time.perf_counter() - started
    result = {
        "dry_run": args.dry_run,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": device_facts(run.device),
        "model": run.model_label,
        "sections": sections,
        "wall_s": time.perf_counter() - t0,
    }
    text = markdown(result)
    result["table"] = text
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(workload.plain(result), indent=2))
    (out / "gpu.md").write_text(text + "\n")
    print(text)
    return 1 if any("error" in s for s in sections.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
