"""The embedded `filesystem://` broker never hands a consumer half a message."""

from __future__ import annotations

import threading

from kombu import Connection
from kombu.transport import filesystem

from engine.queue import broker_files
from engine.queue.app import celery_config
from tests.conftest import make_settings


def _race(transport: type, folder: str, n: int) -> tuple[list[object], list[str]]:
    """One connection writes `n` messages while another reads as fast as it can."""
    options = {"data_folder_in": folder, "data_folder_out": folder, "store_processed": False}
    got: list[object] = []
    errors: list[str] = []
    done = threading.Event()
    with (
        Connection(transport=transport, transport_options=options) as writer,
        Connection(transport=transport, transport_options=options) as reader,
    ):
        put, get = writer.default_channel, reader.default_channel

        def read() -> None:
            while len(got) + len(errors) < n:
                try:
                    got.append(get._get("gpu"))
                except filesystem.Empty:
                    if done.is_set():
                        try:
                            got.append(get._get("gpu"))
                        except filesystem.Empty:
                            return
                except Exception as exc:  # noqa: BLE001 - kombu's own transport fails here
                    errors.append(type(exc).__name__)

        thread = threading.Thread(target=read)
        thread.start()
        for i in range(n):
            put._put("gpu", {"i": i})
        done.set()
        thread.join(timeout=60)
    return got, errors


def test_a_reader_racing_a_writer_gets_every_message_whole(tmp_path):
    # kombu's own transport, the same race, this machine: 35 of 2,000 read empty (each one a
    # JSONDecodeError that kills a worker, and a lost message)
    got, errors = _race(broker_files.Transport, str(tmp_path), 2000)
    assert errors == []
    assert sorted(m["i"] for m in got) == list(range(2000))  # type: ignore[index]
    assert not [p for p in tmp_path.iterdir()]  # no partial files left behind


def test_the_embedded_broker_uses_it(tmp_path):
    config = celery_config(make_settings(tmp_path))
    assert config["broker_transport"] == "engine.queue.broker_files:Transport"
