"""Print the floor versions declared in pyproject.toml, one ``name==version`` per line.

Every ``name>=version`` in ``[project] dependencies`` and in the ``test``
extra (which pulls in the data, plots and progress extras' packages) becomes
``name==version``: .ci/run installs exactly these and runs the fast tests,
so each declared minimum is tested. ``--python`` prints the minimum Python
(``requires-python``) instead, as ``3.11``.
"""

import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
BOUND = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*$")


def floors(project: dict) -> list[str]:
    pins = []
    for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
        match = BOUND.match(requirement)
        if match is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} must state a lower bound as 'name>=version' (and nothing else)")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


def main() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    if sys.argv[1:] == ["--python"]:
        match = re.fullmatch(r">=\s*(\d+\.\d+)", project["requires-python"])
        if match is None:
            raise SystemExit(f"requires-python must be '>=X.Y', got {project['requires-python']!r}")
        print(match[1])
    else:
        print("\n".join(floors(project)))


if __name__ == "__main__":
    main()
