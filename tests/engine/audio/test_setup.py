"""`motif setup-audio` and what `motif status` says about audio."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from engine.audio.setup import PACKAGE, plan_audio_setup
from engine.audio.synth import fluidsynth_available
from tests.conftest import ROOT, make_settings, settings_env

FACTS = dict(euid=1000, apt_get="/usr/bin/apt-get", sudo="/usr/bin/sudo", sudo_ok=False, brew=None)


def test_nothing_to_do_where_fluidsynth_loads():
    plan = plan_audio_setup(fluidsynth_ok=True, **FACTS)
    assert plan.commands == [] and "available" in plan.message


def test_root_and_passwordless_sudo_install_with_apt_get():
    as_root = plan_audio_setup(fluidsynth_ok=False, **dict(FACTS, euid=0))
    assert as_root.commands == [
        ["/usr/bin/apt-get", "update", "-qq"],
        ["/usr/bin/apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
    ]
    with_sudo = plan_audio_setup(fluidsynth_ok=False, **dict(FACTS, sudo_ok=True))
    assert [c[:2] for c in with_sudo.commands] == [["/usr/bin/sudo", "-n"]] * 2
    assert with_sudo.commands[1][2:] == as_root.commands[1]


def test_otherwise_it_says_what_to_run_and_runs_nothing():
    user = plan_audio_setup(fluidsynth_ok=False, **FACTS)
    assert user.commands == [] and f"sudo apt-get install {PACKAGE}" in user.message
    assert "TinySoundFont" in user.message
    mac = plan_audio_setup(fluidsynth_ok=False, **dict(FACTS, apt_get=None, brew="/opt/brew"))
    assert mac.commands == [] and "brew install fluid-synth" in mac.message
    other = plan_audio_setup(fluidsynth_ok=False, **dict(FACTS, apt_get=None))
    assert other.commands == [] and "libfluidsynth" in other.message


def _motif(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(make_settings(tmp_path))
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_the_dry_run_plans_for_this_machine(tmp_path):
    """The real command on this machine, running nothing: what it would do follows from the
    machine's own facts."""
    done = _motif(tmp_path, "setup-audio", "--dry-run")
    assert done.returncode == 0, done.stderr
    if fluidsynth_available():
        assert "FluidSynth is available" in done.stdout and "$ " not in done.stdout
    elif os.geteuid() == 0 and shutil.which("apt-get"):
        assert f"install -y -qq --no-install-recommends {PACKAGE}" in done.stdout
        assert "dry run" in done.stdout
    else:
        assert "FluidSynth is missing" in done.stdout


def test_status_names_the_renderer_and_the_soundfont(tmp_path):
    settings = make_settings(tmp_path)
    done = _motif(tmp_path, "status")
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("audio here: "))
    assert f"SoundFont {settings.soundfont_path}" in line
    assert line.startswith("audio here: FluidSynth" if fluidsynth_available() else
                           "audio here: TinySoundFont (fallback")  # fmt: skip
