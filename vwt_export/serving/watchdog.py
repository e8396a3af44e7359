"""Ends a tritonserver's process group when the process that started it is gone, however it went.

    python watchdog.py PGID FD [GRACE_S]     (started by TritonServer.start; standard library only, a script)

The starter keeps the write end of a pipe whose read end is FD here. Reading it blocks until the starter closes
it: on a normal stop (after it stopped the server itself) or when it dies (the kernel closes its files, even
after SIGKILL). Then whatever is left of the server's process group (the server, its Python backend stubs) gets
SIGTERM, and SIGKILL after GRACE_S. The watchdog runs in a session of its own and ignores SIGINT and SIGHUP, so
the Ctrl-C or the closed terminal that ends the starter does not end it first.

The first guard is the kernel's: the server is started with PR_SET_PDEATHSIG (SIGTERM when the starting thread
dies). This second one also covers stubs that outlive a server killed outright, and a server stuck in shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

GRACE_S = 15.0  # tritonserver's own --exit-timeout-secs is 10


def process_stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a process from /proc/PID/stat, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm)": state, ppid, pgrp, ...
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its parent."""
    stat = process_stat(pid)
    return stat is not None and stat[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            stat = process_stat(proc.name)
            if stat is not None and stat[2] == pgid and stat[0] != "Z":
                out.append(int(proc.name))
    return out


def end_group(pgid: int, grace: float = GRACE_S) -> None:
    """SIGTERM the group, then SIGKILL what is left after `grace` seconds."""
    if not group_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str]) -> None:
    pgid, fd = int(argv[0]), int(argv[1])
    grace = float(argv[2]) if len(argv) > 2 else GRACE_S
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            if not os.read(fd, 1):  # EOF: the starter closed it, or died
                break
        except InterruptedError:
            continue
        except OSError:
            break
    end_group(pgid, grace)


if __name__ == "__main__":
    main(sys.argv[1:])
