"""`motif setup-audio`: the command line of engine.audio.setup, which decides what to run
(`machine_plan`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from engine.audio import setup
from engine.audio.setup import PACKAGE, fluidsynth_loads, machine_plan


def setup_audio_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="motif setup-audio", description=setup.__doc__)
    p.add_argument("--dry-run", action="store_true", help="print the commands; run nothing")
    args = p.parse_args(argv)
    plan = machine_plan()
    dry = " (dry run: nothing is run)" if args.dry_run and plan.commands else ""
    print(f"motif: {plan.message}{dry}")
    for command in plan.commands:
        print("  $ " + " ".join(command))
    if args.dry_run or not plan.commands:
        return 0
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in plan.commands:
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            # The fallback still renders: the first command goes on, saying so.
            print(
                f"motif: `{' '.join(command)}` failed (exit {done.returncode}); Motif renders "
                "with TinySoundFont until libfluidsynth is installed",
                file=sys.stderr,
            )
            return 0
    if fluidsynth_loads():
        print("motif: FluidSynth is installed: Motif renders with it.")
    else:
        print(f"motif: {PACKAGE} is installed but pyfluidsynth cannot load it", file=sys.stderr)
    return 0
