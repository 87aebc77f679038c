"""bench.airds: Aird's Airs parsed by the corpus's own path and cached without loss."""

from __future__ import annotations

from bench.airds import CACHE, FOLDER, load_pieces, parse_airds, save_pieces


def test_parse_and_cache_round_trip(tmp_path):
    pieces, failures = parse_airds(limit=3)
    assert len(pieces) + sum(failures.values()) == 3 and len(pieces) >= 2
    for p in pieces:
        assert p.notes and p.style == "celtic"
        assert p.meta["path"].startswith(f"{FOLDER}/book1.abc#")
        assert min(n.start for n in p.notes) < p.beats_per_bar  # a pickup is padded to bar 1
    out = tmp_path / "airds.npz"
    save_pieces(pieces, out)
    assert load_pieces(out) == pieces  # notes, metre, tempo and names (meta is not compared)
    assert [p.meta for p in load_pieces(out)] == [p.meta for p in pieces]
    assert not list(tmp_path.glob("*.part*"))


def test_the_shipped_cache_holds_the_six_books():
    pieces = load_pieces(CACHE)
    assert len(pieces) > 1000  # of 1,180 tunes, the few that music21 cannot read are left out
    books = {p.meta["path"].split("#")[0] for p in pieces}
    assert books == {f"{FOLDER}/book{i}.abc" for i in range(1, 7)}
