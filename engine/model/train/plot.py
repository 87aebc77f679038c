"""The loss curve of a training run: the training loss and the validation NLL per step, as a PNG
beside the checkpoint (`<stem>-loss.png`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_nll"]) for h in history if "val_nll" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss (NLL / note)", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation NLL / note")
    if train:  # the first steps' huge losses would flatten the interesting part
        ax.set_ylim(top=1.2 * max(v for _, v in train[len(train) // 10 :] + val))
    ax.set_xlabel("step")
    ax.set_ylabel("nats per note")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
