"""`motif setup-audio`: real FluidSynth where it can be had (the system's libfluidsynth3).

As root, or with passwordless sudo, on Debian or Ubuntu it installs the library with apt-get;
anywhere else it says what to run. Without the library Motif renders with TinySoundFont.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

PACKAGE = "libfluidsynth3"
CHECK = "import fluidsynth"  # pyfluidsynth raises ImportError without the system library


@dataclass(frozen=True)
class AudioSetupPlan:
    """What `motif setup-audio` does on this machine: commands to run, and what to say."""

    message: str
    commands: list[list[str]] = field(default_factory=list)


def plan_audio_setup(
    *,
    fluidsynth_ok: bool,
    euid: int,
    apt_get: str | None,
    sudo: str | None,
    sudo_ok: bool,
    brew: str | None,
) -> AudioSetupPlan:
    """The plan for a machine with these facts (see `machine_plan` for this one's)."""
    if fluidsynth_ok:
        return AudioSetupPlan("FluidSynth is available: Motif renders with it.")
    if apt_get:
        update = [apt_get, "update", "-qq"]
        install = [apt_get, "install", "-y", "-qq", "--no-install-recommends", PACKAGE]
        if euid == 0:
            return AudioSetupPlan(f"installing {PACKAGE} with apt-get", [update, install])
        if sudo and sudo_ok:
            return AudioSetupPlan(
                f"installing {PACKAGE} with sudo apt-get",
                [[sudo, "-n", *update], [sudo, "-n", *install]],
            )
        return AudioSetupPlan(
            f"FluidSynth is missing. Run `sudo apt-get install {PACKAGE}`, then "
            "`motif setup-audio` again to check. Until then Motif renders with TinySoundFont."
        )
    if brew:
        return AudioSetupPlan(
            "FluidSynth is missing. Run `brew install fluid-synth`. Until then Motif renders "
            "with TinySoundFont."
        )
    return AudioSetupPlan(
        "FluidSynth is missing. Install your system's libfluidsynth (version 2 or 3) package. "
        "Until then Motif renders with TinySoundFont."
    )


def fluidsynth_loads() -> bool:
    """Whether a fresh Python process can load pyfluidsynth (this one may have cached a miss)."""
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, timeout=60)
    return done.returncode == 0


def machine_plan() -> AudioSetupPlan:
    sudo = shutil.which("sudo")
    sudo_ok = False
    if sudo and os.geteuid() != 0:
        probe = subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=30)
        sudo_ok = probe.returncode == 0
    return plan_audio_setup(
        fluidsynth_ok=fluidsynth_loads(),
        euid=os.geteuid(),
        apt_get=shutil.which("apt-get"),
        sudo=sudo,
        sudo_ok=sudo_ok,
        brew=shutil.which("brew"),
    )
