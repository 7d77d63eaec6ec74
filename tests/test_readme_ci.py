"""The README's two commands are the ones CI runs, and CI fails when any step of them fails."""

import os
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Install and run.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README must open its install section with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _ci_steps() -> list[str]:
    """The command of every `step '...'` line of .ci/run."""
    steps = []
    for line in CI.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["step"]:
            assert len(words) == 2, f"one quoted command per step: {line}"
            steps.append(words[1])
    return steps


def test_ci_runs_the_readme_commands_verbatim():
    commands = _readme_commands()
    assert len(commands) == 2
    steps = _ci_steps()
    for command in commands:
        assert command in steps, f"CI does not run the README command {command!r}"


def test_every_ci_command_runs_as_a_step():
    """Outside the `step` helper, .ci/run only sets up the shell: no bare command can slip past."""
    body = re.sub(r"\nstep\(\) \{.*?\n\}\n", "\n", CI.read_text(), flags=re.S)
    allowed = ("set ", "cd ", "export ", "step ", "echo ")
    for line in body.splitlines():
        code = line.strip()
        if code and not code.startswith("#") and not code.startswith("#!"):
            assert code.startswith(allowed), f".ci/run runs {code!r} outside `step`"


_STUB = """#!/usr/bin/env bash
echo "{name} $*" >> "$CI_LOG"
exit "${{{var}:-0}}"
"""


def _stub(path: Path, name: str, var: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_STUB.format(name=name, var=var))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def ci_tree(tmp_path: Path) -> Path:
    """A copy of .ci/run beside stub set-up, geoalign, python and ruff that log their calls."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(CI, tmp_path / ".ci" / "run")
    _stub(tmp_path / "scripts" / "setup.sh", "setup", "SETUP_RC")
    _stub(tmp_path / ".venv" / "bin" / "geoalign", "geoalign", "GEOALIGN_RC")
    _stub(tmp_path / ".venv" / "bin" / "python", "python", "PYTEST_RC")
    _stub(tmp_path / ".venv" / "bin" / "ruff", "ruff", "RUFF_RC")
    _stub(tmp_path / ".venv" / "bin" / "lint-imports", "lint-imports", "LINT_IMPORTS_RC")
    return tmp_path


def _run(tree: Path, **rcs: int) -> tuple[int, list[str]]:
    log = tree / "calls.log"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_RC")}
    env.update({k: str(v) for k, v in rcs.items()}, CI_LOG=str(log))
    proc = subprocess.run(
        ["bash", str(tree / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, [c.split()[0] for c in calls]


def test_ci_passes_when_every_step_passes(ci_tree: Path) -> None:
    rc, calls = _run(ci_tree)
    assert rc == 0
    assert calls == ["setup", "geoalign", "geoalign", "setup", "python", "ruff", "lint-imports"]


def test_a_failed_setup_on_the_left_of_and_fails_the_run(ci_tree: Path) -> None:
    rc, calls = _run(ci_tree, SETUP_RC=1)
    assert rc != 0
    assert calls == ["setup"]  # nothing runs after the failed step


@pytest.mark.parametrize("pytest_rc", [1, 5])  # 5: pytest collected no tests
def test_failed_or_empty_test_run_fails_ci(ci_tree: Path, pytest_rc: int) -> None:
    rc, calls = _run(ci_tree, PYTEST_RC=pytest_rc)
    assert rc != 0 and calls[-1] == "python"


def test_failed_lint_fails_ci(ci_tree: Path) -> None:
    rc, calls = _run(ci_tree, RUFF_RC=1)
    assert rc != 0 and calls[-1] == "ruff"


def test_a_broken_import_contract_fails_ci(ci_tree: Path) -> None:
    rc, calls = _run(ci_tree, LINT_IMPORTS_RC=1)
    assert rc != 0 and calls[-1] == "lint-imports"


@pytest.mark.parametrize("args", [["--devv"], ["--dev", "extra"]])
def test_setup_refuses_unknown_arguments(args: list[str]) -> None:
    """A typo must not silently install the runtime set only (and then fail later in pytest)."""
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHON": "/nonexistent-python"},  # never reaches venv creation
    )
    assert proc.returncode == 2 and "usage: bash scripts/setup.sh [--dev]" in proc.stderr
