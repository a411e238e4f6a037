"""tools/reap_plugins.py on real processes: once the watched script is gone, the run's plugins (tagged, "pulumi" on
their command line, each in its own process group as Pulumi starts them) are ended; the daemons the stack started
(tagged too, but no pulumi) and other runs' plugins are left alone."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REAPER = Path(__file__).resolve().parents[2] / "tools" / "reap_plugins.py"
SLEEP = "import time; time.sleep(120)"


def _start(argv, tag):
    return subprocess.Popen(argv, env={**os.environ, "MLOPS_PULUMI_RUN": tag}, start_new_session=True)


def _gone(proc, timeout=20):
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_the_plugins_of_a_killed_run_are_ended_and_nothing_else():
    script = _start([sys.executable, "-c", SLEEP], "run-1")  # stands for tools/stack.sh
    plugin = _start([sys.executable, "-c", SLEEP, "pulumi-resource-command"], "run-1")
    stubborn = _start([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                       "time.sleep(120)", "pulumi-resource-pulumi-python"], "run-1")
    daemon = _start([sys.executable, "-c", SLEEP, "minio-server"], "run-1")
    other_run = _start([sys.executable, "-c", SLEEP, "pulumi-language-python"], "run-2")
    reaper = subprocess.Popen([sys.executable, str(REAPER), "run-1", str(script.pid)])
    try:
        time.sleep(1)
        assert plugin.poll() is None  # nothing happens while the script runs
        os.killpg(script.pid, signal.SIGKILL)
        assert _gone(plugin, 10) and _gone(stubborn, 25)  # SIGTERM, then SIGKILL for one that ignores it
        assert _gone(reaper, 10)
        assert daemon.poll() is None and other_run.poll() is None
    finally:
        for proc in (script, plugin, stubborn, daemon, other_run, reaper):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
