"""A training run, step by step: the model and optimizer (fresh, fine-tuned or resumed), the
steps, the evaluation and checkpoint at each epoch's end, the test score of the best checkpoint."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.model.checkpoint import load_checkpoint, pick_device, save_checkpoint
from engine.model.events import PHRASE_BARS, SHIFT, EventCodec, TokenizerConfig
from engine.model.generate.plan import N_KEY
from engine.model.network import IGNORE, ModelConfig, MotifSeq2Seq
from engine.model.train.config import OBJECTIVE, TrainConfig, TrainResult, plain_config
from engine.model.train.data import data_hash, eval_batches, load_data, sample_batch
from engine.model.train.plot import plot_losses
from engine.model.train.step import (
    EVAL_SEED_LEN,
    EVAL_TARGET_LEN,
    freeze,
    learning_rate,
    load_base,
    make_optimizer,
    objective,
)

log = logging.getLogger(__name__)
PROGRESS_BAR: dict[str, Any] = {"desc": "train", "unit": "step", "dynamic_ncols": True}


class Run:
    """One training run: the model and optimizer (fresh, fine-tuned or resumed), the data, the
    step count and history, and the clocks. `train` calls its steps in order."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.started = time.perf_counter()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.out = Path(cfg.out)
        self.resume_path = resume_path_for(self.out)
        self.loss_png = cfg.loss_png or self.out.with_name(self.out.stem + "-loss.png")
        resume = self._build_model()
        cfg = self.cfg  # a resumed run keeps its OBJECTIVE
        self.train_step, self.evaluate = objective(
            cfg.through_copy,
            cfg.sampled_inputs,
            cfg.sampled_ramp,
            self.codec,
            skip_next=cfg.sampled_skip_next,
            own_share=cfg.own_share,
            confidence_penalty=cfg.confidence_penalty,
        )
        self.train_data, self.val_data, self.test_data, corpus_hash = load_data(cfg, self.codec)
        self.steps_per_epoch = cfg.steps_per_epoch or max(
            1, self.train_data.notes // (cfg.batch_size * cfg.target_len)
        )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None
        self.step, self.prior_s, self.best_val = 0, 0.0, math.inf
        self.history: list[dict[str, Any]] = []
        if resume is not None:
            self._restore(resume)
        self._log_start()
        self.meta_base = {
            "version": cfg.version or "motif-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
            "corpus_hash": corpus_hash,
            "data_hash": data_hash(self.train_data),
            "train_pieces": len(self.train_data.events),
            "train_notes": self.train_data.notes,
            "init_from": str(cfg.init_from) if cfg.init_from else None,
            "train_config": plain_config(cfg),
            "params": self.model.num_params(),
        }
        self.last_eval: int | None = None
        self.stopped = "budget"
        self.tokens_per_s = 0.0

    def _build_model(self) -> dict[str, Any] | None:
        """Model, codec, optimizer and precision; returns the resume state, if resuming."""
        cfg, device = self.cfg, self.device
        resume = None
        if cfg.resume_from is not None:
            resume = torch.load(cfg.resume_from, map_location="cpu", weights_only=True)
            # a file from before a field of OBJECTIVE existed: that run had it at its default
            kept = {k: getattr(TrainConfig(), k) for k in OBJECTIVE} | resume.get("objective", {})
            self.cfg = cfg = replace(cfg, **kept)
            tok_cfg = TokenizerConfig.from_dict(resume["tokenizer_config"])
            model_cfg = ModelConfig(**resume["model_config"])
        elif cfg.init_from is not None:
            base = load_checkpoint(cfg.init_from)
            tok_cfg, model_cfg = base.codec.config, base.config
            model_cfg = replace(  # learn the phrase and lag inputs from here on, if it lacks them
                model_cfg,
                n_phrase=model_cfg.n_phrase or (PHRASE_BARS if cfg.phrase else 0),
                lag_inputs=model_cfg.lag_inputs or cfg.lags,
                pointer=model_cfg.pointer or cfg.pointer,
            )
        else:
            tok_cfg = TokenizerConfig()
            model_cfg = None
        self.tok_cfg, self.codec = tok_cfg, EventCodec(tok_cfg)
        if model_cfg is None:
            model_cfg = ModelConfig.for_codec(
                self.codec,
                **{
                    k: getattr(cfg, k)
                    for k in ("d_embed", "hidden", "layers", "dropout", "attention")
                },
                n_key=N_KEY if cfg.key_conditioning else 0,
                n_phrase=PHRASE_BARS if cfg.phrase else 0,
                lag_inputs=cfg.lags,
                pointer=cfg.pointer,
            )
        self.model_cfg, self.model = model_cfg, MotifSeq2Seq(model_cfg)
        if cfg.init_from is not None and resume is None:
            load_base(self.model, base.model, cfg.init_from)
        freeze(self.model, cfg.train_only)
        self.model.to(device)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.amp_dtype = None
        if device.type == "cuda" and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif device.type == "cpu" and cfg.cpu_bf16:
            self.amp_dtype = torch.bfloat16
            if not cpu_has_native_bf16():
                log.warning(
                    "--cpu-bf16 on a CPU without AMX or AVX-512 BF16: likely slower than fp32"
                )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        return resume

    def _restore(self, resume: dict[str, Any]) -> None:
        self.model.load_state_dict(resume["model"])
        self.optimizer.load_state_dict(resume["optimizer"])
        self.scaler.load_state_dict(resume["scaler"])
        self.step, self.prior_s = int(resume["step"]), float(resume["elapsed_s"])
        self.best_val, self.history = float(resume["best_val"]), list(resume["history"])
        self.rng.bit_generator.state = resume["numpy_rng"]
        torch.set_rng_state(resume["torch_rng"])
        if "cuda_rng" in resume and torch.cuda.is_available():  # the draws of a GPU run
            torch.cuda.set_rng_state_all(resume["cuda_rng"])

    def _log_start(self) -> None:
        log.info(
            "training %s params on %s: %d train pieces (%d notes), %d val, %d test; "
            "%d steps/epoch, up to %d steps",
            f"{self.model.num_params():,}",
            self.device,
            len(self.train_data.events),
            self.train_data.notes,
            len(self.val_data.events),
            len(self.test_data.events),
            self.steps_per_epoch,
            self.total_steps,
        )

    def elapsed(self) -> float:
        return self.prior_s + time.perf_counter() - self.started

    def take_steps(self) -> None:
        """Steps until the budget (steps, minutes) ends or `should_stop` says so; an evaluation
        at each epoch's end."""
        cfg = self.cfg
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, **PROGRESS_BAR)
        self.model.train()
        clock = _Clock(step_at_start=self.step)
        while self.step < self.total_steps:
            if self.budget_s is not None and self.elapsed() >= self.budget_s:
                self.stopped = "time"
                break
            if cfg.should_stop is not None and cfg.should_stop():
                self.stopped = "stopped"
                break
            lr = self._one_step(clock)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                self._report(clock, lr, bar)
            if bar is not None:
                bar.update(1)
            if self.step % self.steps_per_epoch == 0 or self.step == self.total_steps:
                self.evaluate_and_save()
        if bar is not None:
            bar.close()

    def _one_step(self, clock: _Clock) -> float:
        """A batch, the learning rate, one optimizer step; the losses are read (a wait for the
        device) only when they are logged or an epoch ends. Returns the learning rate."""
        cfg, t_step = self.cfg, time.perf_counter()
        host_batch = sample_batch(self.rng, self.train_data, self.codec, cfg)
        clock.tokens += int((host_batch["target"][..., SHIFT] != IGNORE).sum())
        batch = {k: v.to(self.device, non_blocking=True) for k, v in host_batch.items()}
        progress = self.step / self.total_steps
        if self.budget_s is not None:
            progress = max(progress, self.elapsed() / self.budget_s)
        lr = learning_rate(cfg, progress, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clock.unread.append(
            self.train_step(
                self.model,
                batch,
                self.optimizer,
                self.scaler,
                amp_dtype=self.amp_dtype,
                grad_clip=cfg.grad_clip,
                progress=progress,
            )
        )
        self.step += 1
        log_now = self.step % cfg.log_every == 0 or self.step == self.total_steps
        if log_now or self.step % self.steps_per_epoch == 0:  # one wait: train_s covers the work
            for loss_value in torch.stack(clock.unread).tolist():
                clock.ema = (
                    loss_value if clock.ema is None else 0.95 * clock.ema + 0.05 * loss_value
                )
            clock.unread.clear()
        clock.train_s += time.perf_counter() - t_step
        self.tokens_per_s = clock.tokens / max(1e-9, clock.train_s)
        return lr

    def _report(self, clock: _Clock, lr: float, bar: Any) -> None:
        """The loss into the history, the progress bar and `on_progress`."""
        step, ema = self.step, clock.ema
        self.history.append({"step": step, "loss": ema, "lr": lr})
        per_step = (time.perf_counter() - clock.t_run) / (step - clock.step_at_start)
        eta = (self.total_steps - step) * per_step
        if self.budget_s is not None:
            eta = min(eta, max(0.0, self.budget_s - self.elapsed()))
        if bar is not None:
            bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{self.tokens_per_s:,.0f}", lr=f"{lr:.1e}")
        if self.cfg.on_progress:
            self.cfg.on_progress(
                {
                    "epoch": step / self.steps_per_epoch,
                    "step": step,
                    "total_steps": self.total_steps,
                    "loss": ema,
                    "tokens_per_s": self.tokens_per_s,
                    "eta_s": eta,
                }
            )

    def evaluate_and_save(self) -> None:
        """The validation NLL; the checkpoint when it is the best yet; the resume file and the
        loss picture always."""
        cfg, step = self.cfg, self.step
        self.last_eval = step
        windows = eval_batches(
            self.val_data, self.codec, 64, EVAL_SEED_LEN, EVAL_TARGET_LEN, cfg.eval_windows
        )
        val = self.evaluate(self.model, windows, self.device)
        point: dict[str, Any] = {"step": step, "epoch": step / self.steps_per_epoch}
        if val:
            point.update(val_nll=val["nll_per_note"], val=val)
        self.history.append(point)
        val_nll = val.get("nll_per_note", math.inf)
        meta = dict(
            self.meta_base,
            trained_steps=step,
            epochs=round(step / self.steps_per_epoch, 3),
            metrics={"val": val},
            tokens_per_s=round(self.tokens_per_s, 1),
            wall_s=round(self.elapsed(), 1),
            device=str(self.device),
        )
        if val_nll < self.best_val or not val or not self.out.exists():
            self.best_val = min(self.best_val, val_nll)
            save_checkpoint(self.out, self.model, self.model_cfg, self.tok_cfg, meta, half=cfg.half)
        if cfg.keep_epochs:
            kept = self.out.with_name(f"{self.out.stem}.step{step}.pt")
            save_checkpoint(kept, self.model, self.model_cfg, self.tok_cfg, meta, half=cfg.half)
        self.save_resume()
        plot_losses(self.history, self.loss_png)
        log.info("step %d epoch %.2f: validation %s", step, step / self.steps_per_epoch, val)
        if cfg.on_progress:
            cfg.on_progress(
                {
                    "epoch": step / self.steps_per_epoch,
                    "step": step,
                    "total_steps": self.total_steps,
                    "val_nll": val.get("nll_per_note"),
                    "eta_s": 0.0 if step >= self.total_steps else None,
                }
            )

    def save_resume(self) -> None:
        torch.save(
            {
                "model_config": asdict(self.model_cfg),
                "tokenizer_config": self.tok_cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "elapsed_s": self.elapsed(),
                "best_val": self.best_val,
                "history": self.history,
                "numpy_rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                **(
                    {"cuda_rng": torch.cuda.get_rng_state_all()}
                    if self.device.type == "cuda"
                    else {}
                ),
                "objective": {k: getattr(self.cfg, k) for k in OBJECTIVE},
            },
            self.resume_path,
        )

    def finish(self) -> TrainResult:
        """The best checkpoint's test metrics, written into its meta; the run's result."""
        cfg, device = self.cfg, self.device
        best = load_checkpoint(self.out, device=device)
        test = {}
        if self.test_data.events:
            windows = eval_batches(
                self.test_data, self.codec, 64, EVAL_SEED_LEN, EVAL_TARGET_LEN, None
            )
            test = self.evaluate(best.model, windows, device)
            meta = dict(best.meta)
            meta["metrics"] = dict(meta.get("metrics") or {}, test=test)
            save_checkpoint(
                self.out, best.model, best.config, best.codec.config, meta, half=cfg.half
            )
        val = dict((best.meta.get("metrics") or {}).get("val") or {})
        log.info(
            "done: %d steps, %.0f s, %.0f tokens/s; best validation %s; test %s",
            self.step,
            self.elapsed(),
            self.tokens_per_s,
            val,
            test,
        )
        return TrainResult(
            checkpoint=self.out,
            resume_path=self.resume_path,
            loss_png=self.loss_png,
            steps=self.step,
            epochs=self.step / self.steps_per_epoch,
            best_val_nll=val.get("nll_per_note"),
            val=val,
            test=test,
            tokens_per_s=self.tokens_per_s,
            wall_s=self.elapsed(),
            stopped=self.stopped,
            history=self.history,
        )


class _Clock:
    """This session's throughput and loss: tokens and seconds of work, the loss average, the
    losses not read back yet (reading one waits for its step)."""

    def __init__(self, step_at_start: int) -> None:
        self.step_at_start = step_at_start
        self.t_run = time.perf_counter()
        self.tokens = 0
        self.train_s = 0.0
        self.ema: float | None = None
        self.unread: list[torch.Tensor] = []


def resume_path_for(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".resume.pt")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX-512 BF16): there bf16 autocast
    makes LSTM training about twice as fast; elsewhere it emulates bf16 and is slower."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(
                (line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), []
            )
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
