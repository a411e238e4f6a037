#!/usr/bin/env python3
"""Ends the Pulumi plugins a killed `pulumi up` leaves behind (tools/stack.sh starts it, detached).

    python3 tools/reap_plugins.py RUN_TAG PID

Pulumi starts every plugin (the language host, the command provider, the dynamic providers) in its own process
group, so a SIGKILL of the terminal's group (or a closed terminal) kills pulumi but not them: they go on with
their operations, a SLURM job's wait included, for as long as those take. This waits until PID (tools/stack.sh)
is gone, then sends SIGTERM, and 10 s later SIGKILL, to every process that still carries MLOPS_PULUMI_RUN=RUN_TAG
in its environment and "pulumi" on its command line: that run's plugins only, never the daemons the stack started
(they inherit the tag, but are no pulumi). A plugin that ends closes its ssh sessions, and the submit script on
the login node then cancels its job. After a normal run nothing is left to end. Standard library only."""
from __future__ import annotations

import os
import select
import signal
import sys
import time


def tagged_plugins(tag: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if tag in env and b"pulumi" in cmd:
            found.append(int(entry))
    return found


def main(run_tag: str, pid: int) -> int:
    try:
        fd = os.pidfd_open(pid)
        select.select([fd], [], [])  # readable once the process has exited
    except ProcessLookupError:
        pass
    tag = f"MLOPS_PULUMI_RUN={run_tag}".encode()
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        left = tagged_plugins(tag)
        for plugin in left:
            try:
                os.kill(plugin, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = tagged_plugins(tag)
        if not left:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
