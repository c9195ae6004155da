"""The shared test helpers that synchronise with children: they must wake on the event itself and
fail, rather than hang, when the child can no longer bring it about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import wait_for_path


def test_wait_for_path_wakes_when_a_child_renames_the_file_into_a_new_folder(tmp_path: Path) -> None:
    target = tmp_path / "run" / "last.pt"
    # The child makes the folder and renames a finished file into it, as the checkpointer does,
    # once the test has told it to on stdin: the wait starts before either exists.
    script = (
        "import os, sys, pathlib; sys.stdin.readline(); folder = pathlib.Path(sys.argv[1]); folder.mkdir();"
        "(folder / '.last.pt.tmp').write_text('x'); os.replace(folder / '.last.pt.tmp', folder / 'last.pt');"
        "sys.stdin.readline()"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(target.parent)], stdin=subprocess.PIPE, text=True)
    try:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        wait_for_path(target, [child])
        assert target.read_text() == "x" and child.poll() is None  # woken by the file, not the exit
    finally:
        child.communicate("done\n", timeout=60)


def test_wait_for_path_fails_when_the_child_exits_without_the_file(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(AssertionError, match="never appeared"):
        wait_for_path(tmp_path / "never" / "last.pt", [child])
    assert child.wait(timeout=60) == 3
