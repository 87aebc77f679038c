"""Print the requirements an image needs, read from pyproject.toml (one source for both images).

    python pyproject_deps.py pyproject.toml worker,s3          # base dependencies + those extras
    python pyproject_deps.py pyproject.toml worker --only torch  # just the torch line

The images install these before copying the code, so a code change reuses the dependency layer.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib


def requirements(pyproject: str, extras: str, only: str | None = None) -> list[str]:
    with open(pyproject, "rb") as fh:
        project = tomllib.load(fh)["project"]
    optional = project.get("optional-dependencies", {})
    names = [e.strip() for e in extras.split(",") if e.strip()]
    unknown = [e for e in names if e not in optional]
    if unknown:
        raise SystemExit(f"pyproject_deps: unknown extra(s) {unknown}; known: {sorted(optional)}")
    reqs = list(project.get("dependencies", []))
    for name in names:
        reqs += optional[name]
    if only:
        reqs = [r for r in reqs if _name(r) == _name(only)]
        if not reqs:
            raise SystemExit(f"pyproject_deps: {only} is not required with extras {names}")
    return reqs


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("pyproject")
    p.add_argument("extras", nargs="?", default="", help="comma-separated extras, may be empty")
    p.add_argument("--only", help="print only the requirement on this package")
    args = p.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extras, args.only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
