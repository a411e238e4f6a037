"""What a running embedded stack must not show: its generated secrets anywhere in plain text (state, outputs, logs,
the report, command lines), a socket listening beyond loopback, a store that answers without credentials.
Functions over a stack name, so the acceptance test (test_security.py, on the itest stack) and a person checking
another stack by hand use the same checks."""
from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.conftest import ROOT, STATE_ROOT, run

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's marker of a secret value in state
SECRET_NAME = re.compile(r"key|secret|password|token|root_user", re.I)
# Secret-marked values that are none: the login node's public host key (pinned in the ssh connection), Pulumi's
# serialized dynamic providers, and user names (MLflow's admin is named in its user table and request log).
NOT_SECRET_NAME = re.compile(r"^(host_?key|__provider)$", re.I)
USER_NAME = re.compile(r"username$", re.I)
# The files that hold a secret by design (the login node's client key, which the ssh transport is given).
HOLDERS = ("ssh/client_ed25519",)


def state_dirs(stack: str) -> list[Path]:
    return [STATE_ROOT / stack, STATE_ROOT / f"{stack}-serving"]


def secret_values(stack: str) -> dict[str, str]:
    """Every generated secret of the stack, decrypted from its state: name -> value. A secret that is a plain
    string is taken whole (the ssh private key); inside a secret object, the values under secret-like names
    (MINIO_ROOT_PASSWORD, AWS_SECRET_ACCESS_KEY, ...), not the endpoint beside them."""
    export = json.loads(run(["pulumi", "stack", "export", "--show-secrets", "--stack", stack], check=True).stdout)
    found: dict[str, str] = {}
    usernames: set[str] = set()

    def keep(name: str, value: str) -> None:
        n = 1
        while found.get(name if n == 1 else f"{name}#{n}") not in (None, value):
            n += 1
        found[name if n == 1 else f"{name}#{n}"] = value

    def leaves(name: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                leaves(k, v)
        elif isinstance(value, str) and USER_NAME.search(name):
            usernames.add(value)
        elif isinstance(value, str) and len(value) >= 12 and SECRET_NAME.search(name):
            keep(name, value)

    def walk(name: str, node) -> None:
        if isinstance(node, dict):
            if node.get(SECRET_SIG) and "plaintext" in node:
                value = json.loads(node["plaintext"])
                if isinstance(value, str) and len(value) >= 12 and not USER_NAME.search(name):
                    keep(name, value)
                else:
                    leaves(name, value)
                return
            for k, v in node.items():
                walk(k, v)
        elif isinstance(node, list):
            for v in node:
                walk(name, v)

    walk("", export)
    return {name: value for name, value in found.items()
            if not NOT_SECRET_NAME.match(name.split("#")[0]) and value not in usernames}


def needles(secrets: dict[str, str]) -> dict[str, str]:
    """What to grep for: each value, and each long line of a multi-line one (a key file's base64 body, less its
    first line, which is the same in every OpenSSH key)."""
    out = {}
    for name, value in secrets.items():
        lines = [line for line in value.splitlines() if len(line) >= 16 and "PRIVATE KEY" not in line][1:]
        for i, line in enumerate(lines or [value]):
            out[f"{name}[{i}]" if lines else name] = line
    return out


MAX_BYTES = 64 << 20  # data sets and model weights are bigger; no log, config or record is


def places(stack: str) -> list[Path]:
    """Every file the stack writes that could leak: its Pulumi state (all of the backend's files, history and
    backups included), the reports folder, and every file under the stack's state folders (logs, job folders,
    configs, MinIO's data) up to MAX_BYTES, except the files that hold a secret by design."""
    files = [p for p in (ROOT / ".pulumi-state").rglob("*") if p.is_file()]
    files += [p for p in (ROOT / "reports" / stack).rglob("*") if p.is_file()]
    for folder in state_dirs(stack):
        files += [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                  and not any(str(p).endswith(h) for h in HOLDERS) and p.stat().st_size <= MAX_BYTES]
    return files


def leaks(stack: str, secrets: dict[str, str]) -> list[str]:
    """`<where>: <secret name>` for every secret value found in plain text."""
    found = []
    wanted = {name: value.encode() for name, value in needles(secrets).items()}
    for path in places(stack):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path}: {name}" for name, value in wanted.items() if value in data]
    output = run(["pulumi", "stack", "output", "--json", "--stack", stack], check=True).stdout
    found += [f"pulumi stack output: {name}" for name, value in wanted.items() if value.decode() in output]
    for pid in stack_pids(stack):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        found += [f"command line of pid {pid}: {name}" for name, value in wanted.items() if value in cmdline]
    return found


def stack_pids(stack: str) -> set[int]:
    """The stack's processes: those whose command line names one of its state folders, and their children."""
    dirs = [str(d) for d in state_dirs(stack)]
    parents, pids = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if any(d in cmd for d in dirs):
            pids.add(int(proc.name))
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in pids} - pids
        pids |= children
        grew = bool(children)
    return pids


def listeners(pids: set[int], ports: list[int]) -> list[tuple[str, str]]:
    """(local address, process) of every listening TCP socket owned by these processes or on these ports."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        cols = line.split()
        local = cols[3]
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        port = int(local.rsplit(":", 1)[1])
        if owners & pids or port in ports:
            found.append((local, " ".join(cols[5:])))
    return found


def status_without_credentials(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
