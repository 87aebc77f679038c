"""bench.gpu's dry run: every section of the GPU check runs on the CPU at toy sizes (a real
worker subprocess included) and lands in one JSON and one Markdown table."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu


@pytest.mark.slow
def test_the_dry_run_runs_every_section(tmp_path, capsys):
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    sections = result["sections"]
    assert list(sections) == list(gpu.SECTIONS)
    assert not [name for name, s in sections.items() if "error" in s]
    assert sections["cuda_graphs"]["skipped"]  # the one section that needs CUDA itself
    decode = sections["decode_requests"]
    assert decode["b1"]["notes"] > 0 and decode["b2"]["notes_per_s"] > 0
    network = sections["decode_network"]["b2"]
    assert network["fp32_ms_per_step"] > 0 and 0 <= network["bf16_max_rel_diff"] < 0.05
    train = sections["train_amp"]
    assert train["amp_dtype"] == "bfloat16" and train["amp"]["notes_per_s"] > 0
    assert train["amp"]["mean_loss"] == pytest.approx(train["fp32"]["mean_loss"], rel=0.05)
    assert sections["end_to_end"]["done_s"] > 0 and sections["end_to_end"]["device"] == "cpu"
    table = (tmp_path / "gpu.md").read_text()
    assert table == result["table"] + "\n" and table in capsys.readouterr().out
    for section in ("decode", "decode fp32 vs bf16", "training", "end to end", "cuda_graphs"):
        assert f"| {section} |" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_writes_nothing(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path / "out")]) == 2
    assert "--dry-run" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
