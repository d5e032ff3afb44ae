"""The repository stands alone: nothing in it points to files a person who clones it lacks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Outside references: the design contract the project began from, and its section numbers.
# (spelled in pieces, so that this file does not name them itself)
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "DESIGN" + " section", "DESIGN" + r"\.md"]))
# Applied migrations are checksummed: their first comments stay as written.
FROZEN = ("infra/migrations/0003_alarms.sql", "infra/migrations/0004_commands.sql")


def _tracked() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("the tests run from a git checkout (CI clones the repository)")
    return [name for name in listed.stdout.splitlines() if not name.startswith("bench/results/")]


def test_no_file_points_outside_the_repository() -> None:
    found = []
    for name in _tracked():
        if name in FROZEN:
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(text.splitlines(), 1)
                  if OUTSIDE.search(line)]
    assert found == []


def test_the_frozen_migrations_are_the_only_exceptions() -> None:
    for name in FROZEN:
        assert OUTSIDE.search((ROOT / name).read_text(encoding="utf-8")), name
