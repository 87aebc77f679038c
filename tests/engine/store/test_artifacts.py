from __future__ import annotations

import pytest

from engine.store.artifacts import (
    ArtifactStore,
    attempt_key,
    file_name,
    model_key,
    result_stem,
    training_key,
    tune_key,
)


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


def test_attempt_keys_keep_the_layout_and_give_their_file_name_back():
    key = attempt_key(12, 3, f"{result_stem(12)}-score-2.png")
    assert key == "requests/12/attempt-3/motif-12-score-2.png"
    assert file_name(key) == "motif-12-score-2.png"
    assert attempt_key(12, 4, file_name(key)) != key  # attempts never share a key


def test_tune_model_and_training_keys(tmp_path):
    digest = "ab" + "0" * 62
    assert tune_key(digest) == f"tunes/ab/{digest}.mid"
    assert model_key("motif-run-3-20261207063000") == "models/motif-run-3-20261207063000.pt"
    assert training_key(4, "loss.png") == "training/4/loss.png"
    store = ArtifactStore(str(tmp_path))
    for key in (tune_key(digest), model_key("v"), training_key(4, "loss.png")):
        store.put(key, b"x")  # every key is one the store accepts
        assert file_name(key) == key.rsplit("/", 1)[-1] and store.exists(key)
