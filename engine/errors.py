"""Domain errors: each carries a message a user can act on. Anything else is a bug."""

from __future__ import annotations

from pathlib import Path


class MotifError(Exception):
    """Base of every error whose message is meant for the person who caused it."""

    for_operator = False  # True: the message names server paths or settings; users get OPERATOR

    def __init__(self, user_message: str, *, detail: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.detail = detail or user_message


class BadMidi(MotifError):
    """The MIDI bytes are unusable as a seed (corrupt, empty, drums only, too big, ...)."""


class BadCheckpoint(MotifError):
    """A file that is not a (usable) Motif checkpoint."""


class BadParams(MotifError):
    """A request option is out of range or unknown."""


class NotFound(MotifError):
    """A request, tune or model that was asked for does not exist."""


class NotAllowed(MotifError):
    """The caller may not do this (not an admin, not the owner)."""


class RateLimited(MotifError):
    """Too many requests; `retry_after_s` says when to try again."""

    def __init__(self, user_message: str, *, retry_after_s: float) -> None:
        super().__init__(user_message)
        self.retry_after_s = retry_after_s


class QueueFull(RateLimited):
    """The global queue cap is reached."""


class ServiceUnavailable(MotifError):
    """The database or the broker cannot be reached."""


class QueueUnreachable(ServiceUnavailable):
    """The broker refused a send. `saved` says whether the request row is kept (it then starts
    when the broker is back: the reaper sends it)."""

    def __init__(self, user_message: str, *, detail: str | None = None, saved: bool = False):
        super().__init__(user_message, detail=detail)
        self.saved = saved


class StorageUnavailable(MotifError):
    """The artifact store cannot be written (read-only, full, or cannot be created)."""


class SchemaOutOfDate(MotifError):
    """The database schema is older than the code; the message names the command to run."""


class BadSoundfont(MotifError):
    """The configured soundfont is missing or unreadable; the message names the setting."""

    for_operator = True


OPERATOR_TEXT = (
    "Motif is misconfigured on the server side; the operators have the details in the log. "
    "Please try again later."
)


def public_message(error: MotifError) -> str:
    """What a user may read: operator errors (paths, settings) stay in the log."""
    return OPERATOR_TEXT if error.for_operator else error.user_message


class Busy(MotifError):
    """Something that runs one at a time (a training run) is already running."""


def make_folder(path: Path, what: str = "data folder") -> None:
    """Create `path` (and its parents), or say in one line why it cannot be created."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ServiceUnavailable(
            f"The {what} {path} cannot be created: {exc.strerror or exc}.", detail=str(exc)
        ) from exc
