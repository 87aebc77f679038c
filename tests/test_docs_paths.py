"""Every module path the README and docs/ name exists: `engine.model.generate.plan`,
`engine.model.train.step.train_step`, `engine/model/copy/copying.py`, `model/network.py`
(issue 27: moved modules left stale references behind)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

DOTTED = re.compile(r"(?<![\w./-])((?:engine|bot|bench)(?:\.\w+)+)")
SLASHED = re.compile(r"(?<![\w./-])((?:engine|bot|bench|tests)/[\w/]+\.py)\b")
# a path inside engine/ written from its layer down, as docs/layout.md does: `model/network.py`
SHORT = re.compile(
    r"(?<![\w./-])((?:music|model|audio|store|queue|service|worker|cli)/[\w/]+\.py)\b"
)
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


def test_every_module_path_in_the_docs_exists():
    bad = [f"{d.relative_to(ROOT)}: {name}" for d in DOCS for name in stale(d.read_text())]
    assert not bad, "\n".join(bad)


def test_a_stale_path_is_found():
    text = "see engine.model.plan, `engine/model/copying.py`, model/train.py and bench.json"
    assert stale(text) == ["engine.model.plan", "engine/model/copying.py", "model/train.py"]
    assert stale("engine.model.generate.plan.seed_key and engine/model/copy/copying.py") == []
