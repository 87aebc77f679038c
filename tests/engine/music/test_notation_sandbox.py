"""The notation parser as a sandbox: seed text is data (never a path or a URL), the parser
process sees no secrets and has an empty folder, the XML tree is built in the limited child,
parsers are shared fairly between users, and failed parses use up a per-user budget."""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import MotifError, RateLimited
from engine.music import notation
from engine.music.notation import NotationLimits, load_notation_seed
from engine.music.parsers import ParserBusy, ParserPool, PoolLimits, parser_environment

music21 = pytest.importorskip("music21")

SECRET_TUNE = "X:1\nT:Secret Host Tune\nM:4/4\nL:1/8\nK:G\nGABc dedB|GABc d4|\n"
JIG = b"X:1\nT:Jig\nM:6/8\nL:1/8\nK:Em\nB|EFG BAG|FGA B2B|EFG BAG|FDF E2:|\n"


@pytest.fixture
def fresh_parsers(monkeypatch: pytest.MonkeyPatch) -> Iterator[ParserPool]:
    """A pool of its own, started under this test's environment."""
    pool = ParserPool()
    monkeypatch.setattr(notation, "PARSERS", pool)
    yield pool
    pool.close()


def test_an_abc_seed_that_names_a_host_file_never_opens_it(tmp_path: Path, fresh_parsers):
    secret = tmp_path / "secret.abc"
    secret.write_text(SECRET_TUNE)
    # music21's parse() took this whole text for a path: `K:/..` climbs out of the bogus folder
    text = ("K:" + "/.." * 30 + str(secret)).encode()
    try:
        seed = load_notation_seed(text, "trick.abc")
    except MotifError:
        return  # refused: fine
    assert seed.title != "Secret Host Tune"
    assert len(seed.piece.notes) != 16


def test_an_http_seed_is_never_fetched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            hits.append(self.path)
            body = SECRET_TUNE.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # a music21 that may download, as an operator's home folder could say
    home = tmp_path / "home"
    home.mkdir()
    (home / ".music21rc").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<settings encoding="utf-8">\n'
        '  <preference name="autoDownload" value="allow" />\n</settings>\n'
    )
    monkeypatch.setenv("HOME", str(home))
    pool = ParserPool()
    monkeypatch.setattr(notation, "PARSERS", pool)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tune.abc\nK:C\n"
        try:
            seed = load_notation_seed(url.encode(), "link.abc")
            assert seed.title != "Secret Host Tune"
        except MotifError:
            pass
    finally:
        pool.close()
        server.shutdown()
    assert hits == []


def test_the_parser_process_has_no_secrets_and_an_empty_folder(
    monkeypatch: pytest.MonkeyPatch, fresh_parsers: ParserPool
):
    monkeypatch.setenv("DISCORD_TOKEN", "token-that-must-not-leak")
    monkeypatch.setenv("MOTIF_DATABASE_URL", "postgresql://motif:hunter2@db/motif")
    assert len(load_notation_seed(JIG, "jig.abc").piece.notes) == 22
    (proc,) = fresh_parsers.processes()
    environ = Path(f"/proc/{proc.pid}/environ").read_bytes().decode()
    assert "token-that-must-not-leak" not in environ and "hunter2" not in environ
    assert "DISCORD_TOKEN" not in environ and "MOTIF_" not in environ
    folder = os.readlink(f"/proc/{proc.pid}/cwd")
    assert folder != os.getcwd() and os.listdir(folder) == []
    fresh_parsers.close()
    assert not os.path.exists(folder)  # removed with its process


def test_parser_environment_keeps_only_a_path_and_a_locale():
    env = parser_environment(
        {"PATH": "/bin", "LANG": "C.UTF-8", "DISCORD_TOKEN": "x", "PGPASSWORD": "y"}, "/tmp/e"
    )
    assert env == {
        "PATH": "/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp/e",
        "TMPDIR": "/tmp/e",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def nested_mxl(size: int = 4 * 1024 * 1024) -> bytes:
    """A few KB that unpack to `size` bytes of nested elements."""
    depth = (size - 64) // 7
    xml = b"<score-partwise>" + b"<a>" * depth + b"</a>" * depth + b"</score-partwise>"
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("score.musicxml", xml)
    return packed.getvalue()


def test_a_nested_element_mxl_leaves_this_process_memory_flat(fresh_parsers):
    data = nested_mxl()
    assert len(data) < 64 * 1024
    load_notation_seed(JIG, "warm.abc")  # the parser process is up: its start is not measured
    tracemalloc.start()
    try:
        with pytest.raises(MotifError):
            load_notation_seed(data, "nested.mxl")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the 4 MiB text is copied a few times on its way to the parser; a tree would be 100+ MiB
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MiB"


# --- fairness ------------------------------------------------------------------------------
def _take(pool: ParserPool, user: str, got: list[str], release: threading.Event) -> None:
    with pool.turn(user):
        got.append(user)
        release.wait(10)


def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_one_user_never_takes_every_parser():
    pool = ParserPool(PoolLimits(parsers=2, per_user_running=1, per_user_waiting=2))
    got: list[str] = []
    release = threading.Event()
    threads = [threading.Thread(target=_take, args=(pool, "ann", got, release)) for _ in range(3)]
    for t in threads:
        t.start()
    _wait_for(lambda: got == ["ann"] and len(pool._waiting.get("ann", ())) == 2)
    with pool.turn("bob"):  # the second parser was kept for someone else
        pass
    with pytest.raises(ParserBusy), pool.turn("ann"):  # a fourth: one running, two waiting
        pass
    release.set()
    for t in threads:
        t.join(10)
    assert got == ["ann"] * 3


def test_waiting_users_take_turns():
    pool = ParserPool(PoolLimits(parsers=1, per_user_running=1, per_user_waiting=3))
    order: list[str] = []
    releases: dict[str, threading.Event] = {}

    def take(name: str, user: str) -> None:
        releases[name] = threading.Event()
        with pool.turn(user):
            order.append(name)
            releases[name].wait(10)

    threads = [threading.Thread(target=take, args=("a1", "ann"))]
    threads[0].start()
    _wait_for(lambda: order == ["a1"])
    for name, user in (("a2", "ann"), ("a3", "ann"), ("b1", "bob")):  # bob asks last
        threads.append(threading.Thread(target=take, args=(name, user)))
        threads[-1].start()
        waiting = len(threads) - 1
        _wait_for(lambda n=waiting: sum(len(q) for q in pool._waiting.values()) == n)
    while len(order) < 4 or not releases[order[-1]].is_set():
        current = order[-1]
        releases[current].set()
        _wait_for(lambda c=current: order[-1] != c or len(order) == 4)
    for t in threads:
        t.join(10)
    assert order == ["a1", "b1", "a2", "a3"]  # first come, first served would keep bob last


def test_a_long_wait_says_busy():
    pool = ParserPool(PoolLimits(parsers=1, max_wait_s=0.2))
    hold = threading.Event()
    holder = threading.Thread(target=_take, args=(pool, "ann", [], hold))
    holder.start()
    _wait_for(lambda: not pool._free)
    with pytest.raises(ParserBusy), pool.turn("bob"):
        pass
    assert not pool._waiting  # the ticket that gave up is gone
    hold.set()
    holder.join(10)


# --- the failure budget and the limits before any parse ----------------------------------------
UNREADABLE = b"X:1\nM:4/4\nK:C\n[[[[[[(((("


def test_failed_parses_use_up_the_users_budget(monkeypatch: pytest.MonkeyPatch):
    pool = ParserPool(PoolLimits(failure_budget_s=2.0))
    monkeypatch.setattr(notation, "PARSERS", pool)
    try:
        for _ in range(2):  # each failure costs at least a second
            with pytest.raises(MotifError):
                load_notation_seed(UNREADABLE, "bad.abc", user="ann")
        with pytest.raises(MotifError):  # parsed, then refused: no notes; charged too
            load_notation_seed(b"K:C\n", "empty.abc", user="bob")
        assert pool.parses == 3
        with pytest.raises(RateLimited, match="could not be read"):
            load_notation_seed(JIG, "good.abc", user="ann")  # refused before any parse
        assert pool.parses == 3
        assert len(load_notation_seed(JIG, "good.abc", user="bob").piece.notes) == 22
    finally:
        pool.close()


def test_a_timed_out_parse_is_charged_its_time(monkeypatch: pytest.MonkeyPatch):
    pool = ParserPool(PoolLimits(failure_budget_s=1.5))
    monkeypatch.setattr(notation, "PARSERS", pool)
    slow = b"X:1\nM:4/4\nL:1/8\nK:C\n" + b"CDEF GABc|" * 6000  # seconds of music21
    try:
        with pytest.raises(notation.NotationTimeout):
            load_notation_seed(slow, "slow.abc", NotationLimits(parse_timeout_s=1.6), user="ann")
        with pytest.raises(RateLimited):
            load_notation_seed(JIG, "good.abc", user="ann")
        assert pool.parses == 1
    finally:
        pool.close()


def test_pasted_abc_reads_the_same_with_linear_scans():
    from engine.music.notation import abc_from_chat, abc_in_code_block

    one_line = "X:1   T:Jig \t M:6/8  L:1/8   K:Em B|EFG BAG|"
    assert abc_from_chat(one_line) == "X:1\nT:Jig\nM:6/8\nL:1/8\nK:Em\nB|EFG BAG|\n"
    assert abc_from_chat("x" + " " * 5990 + "K:C") == "x\nK:C\n\n"
    assert abc_in_code_block("```" * 2000) is None
    assert abc_in_code_block("hi ```abc\nK:G\nGAB|``` and ```\nK:D\n```") == "K:G\nGAB|"
    assert abc_in_code_block("```no key``` ```ABC K:D d2|```") == "K:D d2|"
