from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.cli.training import train_main
from engine.errors import NotFound
from engine.model.checkpoint import (
    BadCheckpoint,
    load_checkpoint,
    pick_device,
    read_checkpoint_meta,
    save_checkpoint,
)
from engine.model.events import PHRASE as PHRASE_COL
from engine.model.events import PHRASE_BARS, PITCH, SHIFT, EventCodec, TokenizerConfig
from engine.model.generate.plan import N_KEY
from engine.model.network import IGNORE, ModelConfig, MotifSeq2Seq
from engine.model.train.config import TrainConfig, build_parser
from engine.model.train.data import cut_window, encode_pieces, reuse_gaps, sample_batch
from engine.model.train.step import evaluate_nll, make_optimizer, train_step
from engine.model.train.train import train
from engine.music.notes import Note, Piece

CODEC = EventCodec()


PHRASE = [(60, 0.5), (62, 0.5), (64, 1.0), (67, 0.5), (65, 0.5), (64, 0.5), (62, 0.5)]


def _tune(repeats: int = 6, style: str | None = "folk", offset: int = 0) -> Piece:
    notes, t = [], 0.0
    for _ in range(repeats):
        for pitch, dur in PHRASE:
            notes.append(Note(t, dur, pitch + offset, 80))
            t += dur
    return Piece(tuple(notes), style=style)


TINY = dict(
    corpus_path=None,
    d_embed=16,
    hidden=32,
    layers=1,
    dropout=0.0,
    batch_size=8,
    seed_max=12,
    target_len=12,
    warmup_steps=5,
    threads=1,
    progress=False,
    log_every=10,
)


def test_windows_seeds_and_augmentation():
    data = encode_pieces(CODEC, [_tune(), _tune(offset=5)])
    cfg = TrainConfig(**dict(TINY, batch_size=256), pieces=[])
    rng = np.random.default_rng(0)
    lengths = torch.cat([sample_batch(rng, data, CODEC, cfg)["seed_len"] for _ in range(30)])
    assert (lengths == 0).any() and ((lengths >= 1) & (lengths <= 8)).any() and (lengths > 8).any()
    batch = sample_batch(rng, data, CODEC, cfg)
    target = batch["target"]
    assert target.shape == (256, 12, 6)  # the five columns and PHRASE
    notes = (target[..., SHIFT] != IGNORE) & (target[..., SHIFT] != CODEC.eos)
    phrase = target[..., PHRASE_COL][notes]
    assert phrase.min() >= 0 and phrase.max() < PHRASE_BARS
    pitches = target[..., PITCH][target[..., PITCH] != IGNORE]
    assert pitches.min() >= 0 and pitches.max() < CODEC.n_pitch
    assert len(set(pitches.tolist())) > 8  # transposed
    assert set(batch["style"].tolist()) == {0, CODEC.style_index("folk")}  # style dropout


def test_phrase_column_counts_bars_from_the_first_full_bar():
    # 3/4 with a one-beat pickup: the pickup is the last bar of the phrase before, the first
    # full bar is bar 0 of the phrase, and bar 16 starts the next phrase
    notes = [Note(2.0, 1.0, 67, 80)] + [Note(3.0 + 3 * b, 3.0, 60 + b % 5, 80) for b in range(17)]
    piece = Piece(tuple(notes), time_signature=(3, 4))
    ev = encode_pieces(CODEC, [piece]).events[0]
    assert ev[:, PHRASE_COL].tolist() == [PHRASE_BARS - 1, *range(PHRASE_BARS), 0]
    # no pickup: bar 0 is the phrase's first bar
    plain = Piece(tuple(Note(4.0 * b, 4.0, 60, 80) for b in range(3)))
    assert encode_pieces(CODEC, [plain]).events[0][:, PHRASE_COL].tolist() == [0, 1, 2]


def test_reuse_gaps_find_a_figure_that_returns_transposed():
    # a 4-note figure, a different bar, then the figure a fifth higher
    figure = [(60, 0.5), (62, 0.5), (64, 0.5), (60, 0.5)]
    other = [(70, 1.0), (69, 2.0), (65, 1.0), (72, 1.5)]
    notes, t = [], 0.0
    for pitch, dur in figure + other + [(p + 7, d) for p, d in figure]:
        notes.append(Note(t, dur, pitch, 80))
        t += dur
    gaps = reuse_gaps(CODEC.encode(Piece(tuple(notes))))
    assert gaps.tolist() == [0] * 11 + [8]  # the return's last note, 8 notes after the first
    assert not reuse_gaps(CODEC.encode(_tune(1))).any()  # one statement of a phrase: nothing


def _figure_returns_once() -> Piece:
    """40 notes of a random walk in which one 4-note figure (notes 10-13) comes back a third
    higher at notes 25-28, and no other figure returns."""
    rng = np.random.default_rng(3)
    pitches = list(60 + np.cumsum(rng.choice([-5, -3, -2, -1, 1, 2, 4, 7], size=40)) % 24)
    pitches[25:29] = [p + 4 for p in pitches[10:14]]
    notes = tuple(Note(0.5 * i, 0.5, int(p), 80) for i, p in enumerate(pitches))
    return Piece(notes, style="folk")


def _figure_in_both(batch: dict[str, torch.Tensor], figure: tuple[int, ...]) -> float:
    """Share of rows whose seed and whose continuation both hold `figure` (pitch intervals)."""
    hits = 0
    for seed, n, target in zip(batch["seed"], batch["seed_len"], batch["target"], strict=True):
        parts = (seed[: int(n), PITCH].numpy(), target[:, PITCH].numpy())
        found = [
            any(tuple(np.diff(p[i : i + 4]).tolist()) == figure for i in range(len(p) - 3))
            for p in parts
        ]
        hits += all(found)
    return hits / len(batch["seed"])


def test_reuse_batches_cut_where_the_continuation_returns_to_the_seed():
    piece = _figure_returns_once()
    events = CODEC.encode(piece)
    gaps = reuse_gaps(events)
    assert np.flatnonzero(gaps).tolist() == [28] and gaps[28] == 15
    figure = tuple(np.diff(events[10:14, PITCH]).tolist())
    data = encode_pieces(CODEC, [piece])
    base = dict(TINY, batch_size=64, seed_max=24, no_seed_prob=0.0, short_seed_prob=0.0)
    rng = np.random.default_rng(1)
    plain = TrainConfig(**base, pieces=[])
    reuse = TrainConfig(**base, pieces=[], reuse_prob=1.0)
    plain_share = np.mean(
        [_figure_in_both(sample_batch(rng, data, CODEC, plain), figure) for _ in range(8)]
    )
    reuse_share = np.mean(
        [_figure_in_both(sample_batch(rng, data, CODEC, reuse), figure) for _ in range(8)]
    )
    assert reuse_share > 0.4 and reuse_share > 2.5 * plain_share  # plain cuts: about 0.17


def test_key_dropout_hides_the_key_of_some_seeded_examples():
    data = encode_pieces(CODEC, [_tune(), _tune(offset=5)])
    rng = np.random.default_rng(0)
    plain = TrainConfig(**dict(TINY, batch_size=256), pieces=[], no_seed_prob=0.0)
    batch = sample_batch(rng, data, CODEC, plain)
    assert (batch["key"][batch["seed_len"] >= 3] > 0).all()
    cfg = TrainConfig(**dict(TINY, batch_size=256), pieces=[], no_seed_prob=0.0, key_dropout=0.5)
    batch = sample_batch(rng, data, CODEC, cfg)
    hidden = float((batch["key"][batch["seed_len"] >= 3] == 0).float().mean())
    assert 0.35 < hidden < 0.65


def test_cut_window_appends_eos_at_the_end():
    ev = CODEC.encode(_tune(2))
    seed, target = cut_window(ev, 5, 3, 4, CODEC.eos)
    assert (seed == ev[2:5]).all() and (target == ev[5:9]).all()
    seed, target = cut_window(ev, 12, 3, 8, CODEC.eos)
    assert len(target) == 3 and target[-1, SHIFT] == CODEC.eos and target[-1, PITCH] == IGNORE


def _tiny_model(seed: int = 0) -> MotifSeq2Seq:
    torch.manual_seed(seed)
    return MotifSeq2Seq(
        ModelConfig.for_codec(
            CODEC,
            d_embed=16,
            hidden=32,
            layers=1,
            dropout=0.0,
            n_key=N_KEY,
            n_phrase=PHRASE_BARS,
            lag_inputs=True,
        )
    )


def test_train_step_lowers_the_loss_of_its_batch():
    cfg = TrainConfig(**TINY, pieces=[])
    batch = sample_batch(np.random.default_rng(0), encode_pieces(CODEC, [_tune()]), CODEC, cfg)
    model = _tiny_model()
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    losses = [train_step(model, batch, optimizer) for _ in range(12)]
    assert all(loss.dim() == 0 and not loss.requires_grad for loss in losses)
    assert losses[-1] < 0.9 * losses[0]
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    for name, p in model.named_parameters():  # weight decay on matrices, not embeddings
        assert (id(p) in decayed) == (p.dim() >= 2 and "embed" not in name), name
    # loss scaling (the fp16 path) changes nothing but the gradients' scale in between
    scaled_model = _tiny_model()
    scaled_opt = make_optimizer(scaled_model, cfg, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scaled = [train_step(scaled_model, batch, scaled_opt, scaler) for _ in range(12)]
    torch.testing.assert_close(torch.stack(scaled), torch.stack(losses))


def test_the_loop_takes_train_step(tmp_path):
    """The loop's logged losses are those of `train_step` on the loop's batches."""
    base = dict(TINY, warmup_steps=0, schedule="constant", log_every=1)
    pieces = [_tune(), _tune(offset=3)]
    result = train(
        TrainConfig(
            **base, pieces=pieces, val_pieces=[_tune(2)], test_pieces=[], max_steps=6,
            out=tmp_path / "m.pt",
        )
    )  # fmt: skip
    cfg = TrainConfig(**base, pieces=pieces)
    model = _tiny_model(cfg.seed)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    rng = np.random.default_rng(cfg.seed)
    data = encode_pieces(CODEC, pieces)
    ema = None
    for h in [h for h in result.history if "loss" in h]:
        loss = train_step(model, sample_batch(rng, data, CODEC, cfg), optimizer).item()
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        assert h["loss"] == ema, h["step"]
    assert result.steps == 6 and ema is not None


def test_tiny_model_overfits_a_repeated_phrase(tmp_path):
    seen = []
    cfg = TrainConfig(
        **TINY,
        out=tmp_path / "m.pt",
        pieces=[_tune()] * 4,
        val_pieces=[_tune()],
        test_pieces=[_tune(2)],
        transpose=0,
        lr=1e-2,
        max_steps=150,
        steps_per_epoch=75,
        on_progress=seen.append,
    )
    result = train(cfg)
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert losses[-1] < 0.25 * losses[0]
    assert result.best_val_nll < 1.0 and result.test["nll_per_note"] < 1.5
    assert result.checkpoint.exists() and result.resume_path.exists() and result.loss_png.exists()
    assert {"epoch", "step", "loss", "tokens_per_s", "eta_s"} <= set(seen[0])
    meta = read_checkpoint_meta(result.checkpoint)
    assert meta["trained_steps"] in (75, 150) and meta["metrics"]["test"]["nll_per_note"] > 0
    lm = load_checkpoint(result.checkpoint)
    again = evaluate_nll(lm, [_tune()])
    assert again["nll_per_note"] == pytest.approx(result.best_val_nll, abs=1e-4)
    assert {"nll_shift", "nll_pitch", "nll_duration", "nll_velocity"} <= set(again)


def test_resume_continues_exactly(tmp_path):
    base = dict(
        TINY,
        pieces=[_tune(), _tune(offset=3)],
        val_pieces=[_tune(2)],
        test_pieces=[],
        max_steps=8,
        steps_per_epoch=4,
        log_every=1,
        schedule="constant",
    )
    straight = train(TrainConfig(**base, out=tmp_path / "a.pt"))

    def crash(info):
        if info["step"] == 6 and "loss" in info:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, out=tmp_path / "b.pt", on_progress=crash))
    resumed = train(
        TrainConfig(**base, out=tmp_path / "b.pt", resume_from=tmp_path / "b.resume.pt")
    )
    assert resumed.steps == straight.steps == 8
    a = torch.load(straight.resume_path, weights_only=True)["model"]
    b = torch.load(resumed.resume_path, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_fine_tune_and_time_budget(tmp_path):
    first = train(TrainConfig(**TINY, pieces=[_tune()], out=tmp_path / "a.pt", max_steps=3))
    tuned = train(
        TrainConfig(
            **dict(TINY, hidden=64),
            pieces=[_tune(offset=2)],
            out=tmp_path / "b.pt",
            init_from=first.checkpoint,
            max_minutes=1e-4,
        )
    )
    assert tuned.stopped == "time"
    lm = load_checkpoint(tuned.checkpoint)
    assert lm.config.hidden == 32  # the base checkpoint's config wins
    assert lm.meta["init_from"] == str(first.checkpoint)


def test_checkpoint_round_trip(tmp_path):
    tok = TokenizerConfig(styles=("none", "jig"), n_velocity=4)
    codec = EventCodec(tok)
    cfg = ModelConfig.for_codec(codec, d_embed=8, hidden=16, layers=2)
    model = MotifSeq2Seq(cfg)
    path = save_checkpoint(
        tmp_path / "c.pt", model, cfg, tok, {"version": "v1", "metrics": {"x": 1.5}}
    )
    lm = load_checkpoint(path)
    assert lm.config == cfg and lm.codec.config == tok and lm.meta["version"] == "v1"
    assert lm.meta["metrics"] == {"x": 1.5}
    for k, v in model.state_dict().items():
        w = lm.model.state_dict()[k]
        assert w.dtype == torch.float32
        torch.testing.assert_close(w, v.half().float(), atol=0, rtol=0)
    assert not lm.model.training
    full = save_checkpoint(tmp_path / "f.pt", model, cfg, tok, {}, half=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(load_checkpoint(full).model.state_dict()[k], v)


def test_bad_checkpoints_are_rejected(tmp_path):
    with pytest.raises(NotFound):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadCheckpoint, match="not a readable Motif checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(BadCheckpoint, match="not a Motif checkpoint"):
        load_checkpoint(other)
    cfg = ModelConfig.for_codec(CODEC, d_embed=8, hidden=16, layers=1)
    wrong = save_checkpoint(
        tmp_path / "w.pt", MotifSeq2Seq(cfg), cfg, TokenizerConfig(n_velocity=4)
    )
    with pytest.raises(BadCheckpoint, match="does not match its tokenizer"):
        load_checkpoint(wrong)


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--help"])
    assert exc.value.code == 0
    assert "--max-minutes" in capsys.readouterr().out


def test_cpu_bf16_autocast_tracks_fp32(tmp_path):
    """--cpu-bf16 trains under bf16 autocast (the losses differ from fp32 in the low bits) and
    follows the fp32 loss curve from the same start on the same batches."""
    base = dict(TINY, warmup_steps=0, schedule="constant", log_every=1, transpose=0, lr=1e-2)
    pieces = [_tune(), _tune(offset=3)]
    runs = {}
    for bf16 in (False, True):
        runs[bf16] = train(
            TrainConfig(**base, pieces=pieces, val_pieces=[_tune(2)], test_pieces=[],
                        max_steps=40, steps_per_epoch=40, cpu_bf16=bf16, out=tmp_path / f"m{int(bf16)}.pt")
        )  # fmt: skip
    fp32, bf16 = ([h["loss"] for h in runs[b].history if "loss" in h] for b in (False, True))
    assert len(fp32) == len(bf16) == 40
    assert fp32 != bf16  # autocast really ran: bf16 matmuls round differently
    assert bf16[-1] < 0.5 * bf16[0]
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=0.05)
    assert read_checkpoint_meta(runs[True].checkpoint)["train_config"]["cpu_bf16"] is True
    assert runs[True].best_val_nll == pytest.approx(runs[False].best_val_nll, rel=0.05)


def test_cli_takes_cpu_bf16(tmp_path, monkeypatch):
    seen = []

    def fake_train(cfg: TrainConfig) -> SimpleNamespace:
        seen.append(cfg)
        return SimpleNamespace(checkpoint=cfg.out, steps=0, wall_s=0.0, tokens_per_s=0.0,
                               best_val_nll=None, test={})  # fmt: skip

    monkeypatch.setattr("engine.cli.training.train", fake_train)
    assert train_main(["--cpu-bf16", "--out", str(tmp_path / "m.pt"), "--quiet"]) == 0
    assert train_main(["--out", str(tmp_path / "m.pt"), "--quiet", "--version", "mine"]) == 0
    assert [c.cpu_bf16 for c in seen] == [True, False]  # off unless asked for
    # a run given no --version is named by the one scheme (engine.store.models)
    assert seen[0].version.startswith("motif-train-") and seen[1].version == "mine"


def test_a_resumed_run_keeps_what_it_trained_and_by_what(tmp_path):
    """A --train-only --through-copy --sampled-inputs run resumed with none of those flags
    continues as it began: the same parameters trained, by the same loss, with the same drawn
    pitches, and ends where an uninterrupted run ends."""
    first = train(TrainConfig(**TINY, pieces=[_tune()], out=tmp_path / "base.pt", max_steps=3))
    base = dict(
        TINY,
        pieces=[_tune(), _tune(offset=3)],
        val_pieces=[_tune(2)],
        test_pieces=[],
        init_from=first.checkpoint,
        pointer=True,
        max_steps=6,
        steps_per_epoch=3,
        log_every=1,
        schedule="constant",
    )
    how = dict(
        train_only="pointer.",
        through_copy=True,
        own_share=0.25,
        confidence_penalty=0.05,
        sampled_inputs=0.5,
        sampled_ramp=True,
        sampled_skip_next=True,
    )
    straight = train(TrainConfig(**base, **how, out=tmp_path / "a.pt"))

    def crash(info):
        if info["step"] == 4 and "loss" in info:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**base, **how, out=tmp_path / "b.pt", on_progress=crash))
    resumed = train(
        TrainConfig(**base, out=tmp_path / "b.pt", resume_from=tmp_path / "b.resume.pt")
    )
    assert resumed.steps == straight.steps == 6
    blob = torch.load(resumed.resume_path, weights_only=True)
    assert blob["objective"] == how
    a = torch.load(straight.resume_path, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(blob["model"][k], a[k], atol=0, rtol=0)
    untouched = load_checkpoint(first.checkpoint).model.state_dict()
    for k, v in untouched.items():  # frozen: the base's weights, as saved (fp16)
        torch.testing.assert_close(blob["model"][k], v, atol=0, rtol=0)


def test_keep_epochs_saves_every_evaluation_beside_the_best(tmp_path):
    out = tmp_path / "m.pt"
    cfg = TrainConfig(
        **dict(TINY, schedule="constant"),
        pieces=[_tune(), _tune(offset=3)],
        val_pieces=[_tune(2)],
        test_pieces=[],
        max_steps=8,
        steps_per_epoch=4,
        keep_epochs=True,
        out=out,
    )
    result = train(cfg)
    kept = sorted(p.name for p in tmp_path.glob("m.step*.pt"))
    assert kept == ["m.step4.pt", "m.step8.pt"]
    metas = {n: read_checkpoint_meta(tmp_path / n) for n in kept}
    assert [m["trained_steps"] for m in metas.values()] == [4, 8]
    first, last = (load_checkpoint(tmp_path / n).model.state_dict() for n in kept)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # each is its own step's model
    best = read_checkpoint_meta(result.checkpoint)["trained_steps"]
    best_state = load_checkpoint(result.checkpoint).model.state_dict()
    same = load_checkpoint(tmp_path / f"m.step{best}.pt").model.state_dict()
    for k in best_state:
        torch.testing.assert_close(best_state[k], same[k], atol=0, rtol=0)
    # without the flag only the best is written
    train(TrainConfig(**{**cfg.__dict__, "keep_epochs": False, "out": tmp_path / "n.pt"}))
    assert not list(tmp_path.glob("n.step*.pt"))
    assert build_parser().parse_args(["--keep-epochs"]).keep_epochs is True
    assert build_parser().parse_args([]).keep_epochs is False
