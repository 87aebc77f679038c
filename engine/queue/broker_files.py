"""The `filesystem://` broker of the embedded default, with messages written atomically.

kombu's filesystem transport creates a message file, then writes it: a consumer that moves the
file away in between reads it empty, and the worker dies on the JSON error ("Unrecoverable
error: JSONDecodeError", measured here under load) while the message is lost. Here each
message is written under a name no consumer looks at, then renamed into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # a dot-file without the ".<queue>.msg" suffix: consumers skip it until the rename
        partial = os.path.join(self.data_folder_out, f".partial-{name}")
        try:
            with open(partial, "wb") as fh:
                fh.write(dumps(payload).encode())
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
