"""`motif compose --help` documents every option: what it does, its range and its default."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.cli import build_parser
from engine.music import catalog
from tests.conftest import ROOT


def _compose_parser():  # type: ignore[no-untyped-def]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["compose"]


def test_every_compose_option_has_a_description_with_its_default():
    options = [a for a in _compose_parser()._actions if a.dest != "help"]
    assert {a.dest for a in options} >= {
        "seed", "bars", "style", "temperature", "top_p", "instrument", "tempo", "rng_seed",
    }  # fmt: skip
    for action in options:
        assert action.help and "\n" not in action.help, action.dest
        if action.dest != "seed":
            assert "default" in action.help, action.dest


def test_ranges_in_the_help_are_the_ones_enforced():
    helps = {a.dest: a.help for a in _compose_parser()._actions}
    assert "1 to MOTIF_MAX_BARS (64)" in helps["bars"] and "(8)" in helps["bars"]
    assert f"{catalog.MIN_TEMPERATURE:g} to {catalog.MAX_TEMPERATURE:g}" in helps["temperature"]
    assert f"{catalog.MIN_TOP_P:g} to {catalog.MAX_TOP_P:g}" in helps["top_p"]
    assert f"{catalog.MIN_TEMPO:g} to {catalog.MAX_TEMPO:g}" in helps["tempo"]
    assert f"0 to {catalog.MAX_RNG_SEED}" in helps["rng_seed"]
    assert all(style in helps["style"] for style in catalog.STYLES)
    assert all(name in helps["instrument"] for name in catalog.INSTRUMENTS)


def test_the_help_prints():
    done = subprocess.run(
        [sys.executable, "-m", "engine.cli", "compose", "--help"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0
    assert "default 0.95" in done.stdout and "30 to 300" in done.stdout


# a package's __main__.py, and a module's `if __name__ == "__main__":` block
@pytest.mark.parametrize("module", ["engine.model.corpus", "engine.model.corpus.style_priors"])
def test_the_commands_the_docs_name_by_module_still_run(module):
    # their command lines moved to engine/cli/ (issue 27); the README and docs/ name them by module
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} ") and not done.stderr
