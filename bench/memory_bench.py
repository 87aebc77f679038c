"""Peak memory of a generation worker: a clean subprocess imports what `motif worker` imports,
loads the checkpoint, decodes a batch of 32 requests and renders one result, reading its
resident-set high-water mark (VmHWM) after each stage.

`python -m bench.memory_bench --child MODEL.pt` is that subprocess; `run()` starts it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import workload

ROOT = Path(__file__).resolve().parent.parent


def child(model: str, batch: int, bars: int, threads: int | None, render: bool) -> dict[str, Any]:
    """The measured process's own work (run in the subprocess only)."""
    stages: dict[str, float] = {"torch imported": workload.rss_high_water_kib() / 1024}
    import torch

    if threads:
        torch.set_num_threads(threads)
    import engine.worker.tasks  # noqa: F401 - the worker's imports: Celery app, tasks, pipeline

    stages["imports"] = workload.rss_high_water_kib() / 1024
    from engine.model.checkpoint import load_checkpoint

    lm = load_checkpoint(model, device="cpu")
    stages["model loaded"] = workload.rss_high_water_kib() / 1024
    from bench.batch_bench import requests
    from engine.model.generate.continuation import continue_batch

    reqs, _ = requests(batch, bars)
    t0 = time.perf_counter()
    pieces = continue_batch(lm, reqs)
    decode_s = time.perf_counter() - t0
    stages[f"batch of {batch} decoded"] = workload.rss_high_water_kib() / 1024
    if render:
        from engine.audio.encode import render_audio
        from engine.music.result_midi import to_midi_bytes
        from engine.settings import Settings

        render_audio(to_midi_bytes(reqs[0].seed, pieces[0]), Settings(_env_file=None),
                     program=0)  # fmt: skip
        stages["one result rendered"] = workload.rss_high_water_kib() / 1024
    return {"stages_mib": stages, "decode_s": decode_s,
            "notes": sum(len(p.notes) for p in pieces)}  # fmt: skip


def run(
    batch: int = 32,
    bars: int = 8,
    threads: int | None = None,
    render: bool = True,
    model_path: str | None = None,
) -> dict[str, Any]:
    """VmHWM (MiB) of a fresh worker-like process after each stage; `peak_mib` is the last."""
    choice = workload.motif_model(model_path)
    with workload.temp_dir("motif-bench-mem-") as tmp:
        model_file = choice.file(Path(tmp))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIF_")}
        env["MOTIF_DATA_DIR"] = str(Path(tmp) / "var")  # the Celery app makes broker folders
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "bench.memory_bench", "--child", str(model_file),
               "--batch", str(batch), "--bars", str(bars)]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        if not render:
            cmd.append("--no-render")
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = result["stages_mib"]
    return {
        "model": choice.label,
        "batch": batch,
        "bars": bars,
        **result,
        "model_mib": stages["model loaded"] - stages["imports"],
        "peak_mib": max(stages.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", metavar="MODEL", help="be the measured process for this checkpoint")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bars", type=int, default=8)
    p.add_argument("--threads", type=int)
    p.add_argument("--no-render", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        out = child(args.child, args.batch, args.bars, args.threads, not args.no_render)
    else:
        out = run(args.batch, args.bars, args.threads, not args.no_render)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
