"""How the providers reach a cluster's login node: a local shell, or OpenSSH as a user's laptop would.

Plain Python (no Pulumi), so the dynamic providers can carry it and the unit tests can drive it.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional


class ClusterError(RuntimeError):
    """A command on the cluster failed or the cluster could not be reached; the message says which."""


class ClusterUnreachable(ClusterError):
    pass


def removal_script(path: str, root: str) -> str:
    """Bash lines that remove PATH only where it lies strictly inside ROOT, and fail (exit 3) naming it when it
    lies elsewhere (a path taken from scontrol or an output is never trusted as it is) or is still there after
    `rm -rf`. Both are shell words: quoted by the caller, or holding $HOME on purpose. The parent is resolved
    (symlinks, ..), the last component is not followed: a link is removed, never its target."""
    return (f'p={path}; r=$(realpath -m -- {root}); b=$(basename -- "$p"); d=$(realpath -m -- "$(dirname -- "$p")")/"$b"\n'
            f'case "$b" in .|..|""|*/*) echo "refusing to remove $p: no folder name" >&2; exit 3;; esac\n'
            f'case "$r" in /|"") echo "refusing to remove $p: its folder is /" >&2; exit 3;; esac\n'
            f'case "$d/" in "$r"/?*/) ;; *) echo "refusing to remove $p: not inside $r" >&2; exit 3;; esac\n'
            f'rm -rf -- "$d" || true\n'
            f'if [ -e "$d" ] || [ -L "$d" ]; then echo "cannot remove $d: it is still there" >&2; exit 3; fi\n')


@dataclass(frozen=True)
class Connection:
    kind: str  # "local" or "ssh"
    host: str = "localhost"
    port: int = 22
    user: str = "root"
    private_key: Optional[str] = None  # the key's text (a Pulumi secret upstream); written to a 0600 file per call
    connect_timeout: int = 10
    known_hosts: Optional[str] = None  # None: the user's own ~/.ssh/known_hosts
    env: dict = field(default_factory=dict)  # extra environment for local commands (SLURM_CONF, PATH)

    @classmethod
    def from_props(cls, props: dict) -> "Connection":
        fields = {k: v for k, v in props.items() if k in cls.__dataclass_fields__ and v is not None}
        for number in ("port", "connect_timeout"):  # Pulumi hands numbers over as floats
            if number in fields:
                fields[number] = int(fields[number])
        return cls(**fields)

    @property
    def where(self) -> str:
        return "localhost" if self.kind == "local" else f"{self.user}@{self.host}:{self.port}"

    # -- ssh plumbing ------------------------------------------------------------------------------
    @contextmanager
    def _ssh_options(self) -> Iterator[list[str]]:
        with tempfile.TemporaryDirectory(prefix="mlops-ssh-") as tmp:
            opts = ["-p", str(self.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                    "-o", "LogLevel=ERROR", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
            # A known-hosts file given is the site's word on the login node's key: nothing else is accepted.
            # Without one, the user's own known_hosts, where a new host is accepted once (as ssh would ask).
            opts += (["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
                     if self.known_hosts else ["-o", "StrictHostKeyChecking=accept-new"])
            if self.private_key:
                key = os.path.join(tmp, "id")
                fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.private_key.rstrip("\n") + "\n")
                opts += ["-i", key, "-o", "IdentitiesOnly=yes"]
            yield opts

    def _unreachable(self, stderr: str) -> ClusterUnreachable:
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no answer"
        return ClusterUnreachable(f"cannot reach the cluster at {self.where} over ssh: {last}")

    # -- the interface the providers use -----------------------------------------------------------
    def run(self, script: str, timeout: float = 60, check: bool = True, stdin: Optional[bytes] = None
            ) -> subprocess.CompletedProcess:
        """Run a bash script on the login node; returns the completed process (text stdout/stderr)."""
        if self.kind == "local":
            argv = ["bash", "-c", script]
            env = {**os.environ, **self.env}
        else:
            argv = None
            env = None
        try:
            if argv is not None:
                proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env)
            else:
                with self._ssh_options() as opts:
                    remote = "bash -c " + shlex.quote(script)
                    proc = subprocess.run(["ssh", *opts, f"{self.user}@{self.host}", remote], input=stdin,
                                          capture_output=True, timeout=timeout)
                    if proc.returncode == 255:
                        raise self._unreachable(proc.stderr.decode(errors="replace"))
        except subprocess.TimeoutExpired:
            raise ClusterError(f"command on {self.where} did not finish within {timeout:.0f} s: "
                               f"{script.strip().splitlines()[0][:120]}") from None
        result = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                             proc.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            first = script.strip().splitlines()[0][:120]
            raise ClusterError(f"command on {self.where} exited {result.returncode}: {first}\n"
                               f"{result.stderr.strip()[-2000:]}")
        return result

    def remove(self, path: str, root: str, timeout: float = 600) -> None:
        """Remove the folder PATH, which must lie inside ROOT; ClusterError naming it where it cannot be."""
        try:
            out = self.run(removal_script(shlex.quote(path), shlex.quote(root)), timeout=timeout, check=False)
        except ClusterError as exc:  # unreachable, or too slow: the folder stays, so say which
            raise ClusterError(f"cannot remove {path} on {self.where}: {exc}") from None
        if out.returncode != 0:
            why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"
            raise ClusterError(f"cannot remove {path} on {self.where}: {why}")

    def write_file(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 120) -> None:
        q = shlex.quote(path)
        self.run(f"mkdir -p $(dirname {q}) && cat > {q}.part && chmod {mode:o} {q}.part && mv {q}.part {q}",
                 stdin=data, timeout=timeout)

    def read_file(self, path: str, timeout: float = 60) -> Optional[str]:
        """The file's text, or None where it does not exist."""
        q = shlex.quote(path)
        out = self.run(f"if [ -f {q} ]; then cat {q}; else echo __MISSING__ >&2; exit 3; fi",
                       timeout=timeout, check=False)
        if out.returncode == 3 and "__MISSING__" in out.stderr:
            return None
        if out.returncode != 0:
            raise ClusterError(f"cannot read {path} on {self.where}: {out.stderr.strip()}")
        return out.stdout

    def sync_dir(self, local_dir: str, remote_dir: str, timeout: float = 1800) -> None:
        """Copy a directory's content with rsync (checksums decide what moves, so reruns are cheap)."""
        src = local_dir.rstrip("/") + "/"
        self.run(f"mkdir -p {shlex.quote(remote_dir)}", timeout=60)
        if self.kind == "local":
            argv = ["rsync", "-a", "--checksum", "--delete", src, remote_dir.rstrip("/") + "/"]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        else:
            with self._ssh_options() as opts:
                shell = " ".join(shlex.quote(o) for o in ["ssh", *opts])
                argv = ["rsync", "-a", "--checksum", "--delete", "-e", shell, src,
                        f"{self.user}@{self.host}:{remote_dir.rstrip('/')}/"]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
                if proc.returncode == 255:
                    raise self._unreachable(proc.stderr)
        if proc.returncode != 0:
            raise ClusterError(f"rsync {local_dir} -> {self.where}:{remote_dir} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
