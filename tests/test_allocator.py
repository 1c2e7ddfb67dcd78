"""The `swinv2` command keeps freed memory in the process (glibc), so that fresh activation buffers are not
zero-filled by the kernel on every call; from Python the allocator is left alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's allocator only"
)

# Allocate and free 256 MiB as tensors do (one large block, touched), then report how much stayed resident.
PROBE = """
import sys, torch
from swinv2.cli import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) // 1024
before = rss()
x = torch.ones(64 << 20)
del x
print(kept, rss() - before)
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=environ
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_memory_is_kept_only_when_asked() -> None:
    kept, resident = _probe("keep")
    assert kept == "True" and resident >= 200  # the freed 256 MiB stayed in the heap, ready for reuse
    kept, resident = _probe("leave")
    assert kept == "False" and resident < 50  # glibc's default: the block went back to the kernel


def test_the_users_malloc_settings_win() -> None:
    kept, resident = _probe("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert kept == "False" and resident < 50


def test_only_the_command_line_entry_tunes_the_allocator(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from swinv2 import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["swinv2"])
    assert cli.main() == 2 and calls == [1]  # the console script: no arguments given, sys.argv read
    assert cli.main([]) == 2 and calls == [1]  # from Python: the process's allocator is the caller's
