"""The README's quick start holds exactly two commands, and CI runs the second one."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL)]


def test_quick_start_has_two_commands():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "experiments/digits_mlp.py" in commands[0]
    assert "pytest" in commands[1]


def ci_commands():
    """The command lines of .ci/run, without comments, ``set`` and ``cd``."""
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith(("#", "set ", "cd "))]


def test_ci_runs_the_readme_test_command_first():
    commands = ci_commands()
    assert commands[0].endswith(quick_start_commands()[1]), f".ci/run runs {commands[0]!r} first"


def test_ci_floor_step_installs_exactly_the_declared_minimums():
    """The floor step pins every lower bound of pyproject.toml (dependencies and the test extra)."""
    import subprocess
    import sys
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = subprocess.run([sys.executable, str(ROOT / ".ci" / "floor.py")], capture_output=True, text=True, check=True).stdout.split()
    declared = project["dependencies"] + project["optional-dependencies"]["test"]
    assert sorted(pins) == sorted(r.replace(">=", "==") for r in declared)
    python = subprocess.run([sys.executable, str(ROOT / ".ci" / "floor.py"), "--python"], capture_output=True, text=True, check=True).stdout.strip()
    assert project["requires-python"] == f">={python}"
    floor_step = ci_commands()[-1]
    assert "pip install -r" in floor_step and '-m "not slow and not sweep"' in floor_step and "--no-deps -e ." in floor_step


STANDARD_PROMOTION_REASON = "the README example trains with optax.adamw"


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, "the README should show a Python example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["history"]["test_accuracy"][-1] >= 0.97


def test_readme_engine_example_runs():
    """The open engine's example (every Python block after the first runs too, in order)."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) >= 2
    namespace = {}
    for i, block in enumerate(blocks[1:], start=1):
        exec(compile(block, f"README.md[block {i}]", "exec"), namespace)
    assert namespace["history"]["test_loss"][-1] < 0.3 and "train_penalty" in namespace["history"]
