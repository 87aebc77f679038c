"""Every module path the README and docs/ name exists: `engine.model.generate.plan`,
`engine.model.train.step.train_step`, `engine/model/copy/copying.py`, `model/network.py`, and in
backticks the short forms `model.generate.plan`, `midi_check.SeedLimits`, `Grammar.phrase`,
`requests.sent_at` (issue 27: moved modules left stale references behind)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

DOTTED = re.compile(r"(?<![\w./-])((?:engine|bot|bench)(?:\.\w+)+)")
SLASHED = re.compile(r"(?<![\w./-])((?:engine|bot|bench|tests)/[\w/]+\.py)\b")
# a path inside engine/ written from its layer down, as docs/layout.md does: `model/network.py`
SHORT = re.compile(
    r"(?<![\w./-])((?:music|model|audio|store|queue|service|worker|cli)/[\w/]+\.py)\b"
)
# In backticks, a dotted name may start from a layer (`model.generate.plan`), a module's own name
# (`midi_check.SeedLimits`), a class of the project (`Grammar.phrase`) or an SQL table
# (`requests.sent_at`). History (docs/history/) names what was, so these short forms, whose
# subject may be gone, are checked in the current documents only; full paths everywhere.
TICKED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?`")
LAYERS = ("music", "model", "audio", "store", "queue", "service", "worker", "cli")
HISTORY = ROOT / "docs" / "history"
FILE_SUFFIXES = {"json", "md", "py", "txt", "png", "csv", "npz", "pt", "ogg", "mid", "toml", "yml"}


def module_file(parts: list[str]) -> Path | None:
    path = ROOT.joinpath(*parts)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def names_something(dotted: str) -> bool:
    """A module or package, or a name defined at the top of one (`module.function`,
    `module.Class.method`: the class is checked)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        found = module_file(parts[:i])
        if found is not None:
            rest = parts[i:]
            return not rest or rest[0] in top_level_names(found)
    return False


def stale(text: str) -> list[str]:
    bad = []
    for m in DOTTED.finditer(text):
        name = m.group(1)
        if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES and not names_something(name):
            bad.append(name)
    bad += [m.group(1) for m in SLASHED.finditer(text) if not (ROOT / m.group(1)).is_file()]
    bad += [
        m.group(1) for m in SHORT.finditer(text) if not (ROOT / "engine" / m.group(1)).is_file()
    ]
    return bad


def class_members(node: ast.ClassDef) -> set[str]:
    names = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(item.name)
        elif isinstance(item, ast.Assign):
            names |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            names.add(item.target.id)
    return names


@cache
def project() -> tuple[dict[str, list[Path]], dict[str, set[str]], dict[str, set[str]]]:
    """Modules by their own name, classes by name (with what their bases of the project
    define), and SQL tables by name (their columns and relationships)."""
    modules: dict[str, list[Path]] = {}
    nodes: dict[str, list[ast.ClassDef]] = {}
    for path in sorted(p for top in ("engine", "bot", "bench") for p in (ROOT / top).rglob("*.py")):
        if path.name != "__init__.py":
            modules.setdefault(path.stem, []).append(path)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                nodes.setdefault(node.name, []).append(node)

    def members(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set()
        for node in nodes.get(name, []):
            found |= class_members(node)
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id in nodes and base.id not in seen:
                    found |= members(base.id, seen | {name})
        return found

    classes = {name: members(name) for name in nodes}
    tables = {
        str(item.value.value): class_members(node)
        for ns in nodes.values()
        for node in ns
        for item in node.body
        if isinstance(item, ast.Assign)
        and isinstance(item.value, ast.Constant)
        and any(isinstance(t, ast.Name) and t.id == "__tablename__" for t in item.targets)
    }
    return modules, classes, tables


def stale_short(text: str) -> list[str]:
    """Dotted names in backticks that start from a layer, a module, a class or a table and
    name nothing there; names of anything else (`nn.LSTM`, `str.find`) are not read."""
    modules, classes, tables = project()
    bad = []
    for m in TICKED.finditer(text):
        name = m.group(1)
        head, first = name.split(".")[:2]
        if head in ("engine", "bot", "bench") or name.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue  # full paths: stale() reads them
        if head in LAYERS:
            ok = names_something(f"engine.{name}")
        elif head in modules or head in classes or head in tables:
            ok = (
                any(first in top_level_names(path) for path in modules.get(head, []))
                or first in classes.get(head, set())
                or first in tables.get(head, set())
            )
        else:
            continue
        if not ok:
            bad.append(name)
    return bad


def test_every_module_path_in_the_docs_exists():
    bad = [f"{d.relative_to(ROOT)}: {name}" for d in DOCS for name in stale(d.read_text())]
    assert not bad, "\n".join(bad)


def test_every_short_dotted_name_in_the_current_docs_exists():
    current = [d for d in DOCS if HISTORY not in d.parents]
    bad = [f"{d.relative_to(ROOT)}: {name}" for d in current for name in stale_short(d.read_text())]
    assert not bad, "\n".join(bad)


def test_a_stale_path_is_found():
    text = "see engine.model.plan, `engine/model/copying.py`, model/train.py and bench.json"
    assert stale(text) == ["engine.model.plan", "engine/model/copying.py", "model/train.py"]
    assert stale("engine.model.generate.plan.seed_key and engine/model/copy/copying.py") == []


def test_a_stale_short_name_is_found():
    text = (
        "`model.generate.plan.seed_key`, `model.step`, `midi_check.SeedLimits`, "
        "`midi_check.NoSuchLimit`, `Grammar.phrase`, `JobService._sources_of`, "
        "`Grammar.no_such`, `requests.sent_at`, `requests.no_column`, `nn.LSTM`, `tune.abc`"
    )
    assert stale_short(text) == [
        "model.step",
        "midi_check.NoSuchLimit",
        "Grammar.no_such",
        "requests.no_column",
    ]
