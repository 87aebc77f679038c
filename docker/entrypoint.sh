#!/bin/sh
# Entry point of both Motif images: restore image defaults that an empty `.env` line blanks out,
# then exec the command, so stop signals reach Celery or the bot directly.
set -eu

# .env.example has `MOTIF_SOUNDFONT=` (empty); compose passes that empty value through and it
# would hide the FluidR3 soundfont the worker image installs.
if [ -z "${MOTIF_SOUNDFONT:-}" ] && [ -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
    export MOTIF_SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2
fi

exec "$@"
