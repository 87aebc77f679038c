from __future__ import annotations

import pytest

from engine.store.artifacts import ArtifactStore


def test_local_store_round_trip_and_atomic_overwrite(tmp_path):
    store = ArtifactStore(str(tmp_path / "a"))
    assert store.put("requests/1/x.mid", b"one") == 3
    assert store.get("requests/1/x.mid") == b"one"
    store.put("requests/1/x.mid", b"two")
    assert store.get("requests/1/x.mid") == b"two"
    assert store.exists("requests/1/x.mid")
    assert not list((tmp_path / "a" / "requests" / "1").glob(".tmp-*"))
    store.delete("requests/1/x.mid")
    assert not store.exists("requests/1/x.mid")


def test_fsspec_url_store(tmp_path):
    store = ArtifactStore("memory://motif-test")
    store.put("k/v.bin", b"abc")
    assert store.get("k/v.bin") == b"abc" and store.exists("k/v.bin")
    assert store.local_path("k/v.bin") is None


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "", "a/../../b"])
def test_rejects_keys_that_escape_the_store(tmp_path, key):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(ValueError):
        store.put(key, b"x")
