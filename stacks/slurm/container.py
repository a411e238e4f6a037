"""Apptainer for the workload jobs (`hpc.container`): the image the embedded cluster builds from the repository's
definition file, and how a job runs its workload inside an image.

The image (`ContainerImage`) is a pulumi-command `command:local:Command` on the machine that runs Pulumi, which is
the embedded cluster's only node: `apptainer build` of workloads/apptainer.def on create, the file removed on
delete. Its triggers are the digest of the definition and of the workloads' requirements files, so a change to
either builds a new image (under a new name: the jobs that ran in the old one run again). A site names its own
image instead (`hpc.container.image`).

In a job (`ContainerRun.lines`), before the workload starts: the image and every bind must exist on the node, and
the image must start (`apptainer exec <image> true`), else the job fails with one line naming it; then the job
records the image's sha256 and Apptainer's version (container_env.json), and the workload's own process records what
it sees inside (workloads/container_facts.py, container.json). slurm_submit.py returns both as the job's `container`.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
from pulumi_command import local

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFINITION = REPO_ROOT / "workloads" / "apptainer.def"
# What the image is made of: the definition and the requirements of the environment it copies.
IMAGE_INPUTS = (DEFINITION, *sorted((REPO_ROOT / "workloads").glob("requirements*.txt")),
                *sorted((REPO_ROOT / "workloads" / "image").iterdir()))
# The privileges `apptainer exec` runs with (hpc.container.execMode).
EXEC_FLAGS = {"plain": [], "no-privs": ["--no-privs"], "drop-caps": ["--drop-caps", "CAP_SYS_RESOURCE"],
              "userns": ["--userns"]}
# squashfs with lz4: several times faster to build than the default gzip, for a somewhat larger file.
SQUASHFS_ARGS = "-comp lz4"


def image_digest(files: tuple[Path, ...] = IMAGE_INPUTS) -> str:
    """One hash of the definition and the requirements: a change to any rebuilds the image."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


# What the built image must import before any job runs in it.
SMOKE_TEST = "import numpy, torch; print('image:', __import__('sys').version.split()[0], 'torch', torch.__version__)"


def build_script(apptainer: str, image: str, exec_mode: str = "plain", definition: str = str(DEFINITION)) -> str:
    """The create command: build next to the target name, try it (the workloads' Python imports torch), then move it
    in place (never half an image), and print the image's facts as JSON on stdout; apptainer's progress goes to stderr
    (the Pulumi console)."""
    q = shlex.quote
    img, part, app = q(image), q(f"{image}.part"), q(apptainer)
    return "\n".join([
        "set -euo pipefail",
        f"mkdir -p {q(str(Path(image).parent))}",
        "start=$(date +%s%N)",
        f"{app} build --force --mksquashfs-args {q(SQUASHFS_ARGS)} {part} {q(definition)} >&2"
        f" || {{ rm -f {part}; echo 'apptainer build of {definition} failed' >&2; exit 1; }}",
        f"{app} exec {' '.join(map(q, EXEC_FLAGS[exec_mode]))} {part} python3 -c {q(SMOKE_TEST)} >&2"
        f" && {app} exec {' '.join(map(q, EXEC_FLAGS[exec_mode]))} {part} python3-oumi -c 'import oumi' >&2"
        f" || {{ rm -f {part}; echo 'the image built from {definition} cannot import torch or oumi' >&2; exit 1; }}",
        f"mv -f {part} {img}",
        "seconds=$(awk -v a=\"$start\" -v b=\"$(date +%s%N)\" 'BEGIN {printf \"%.1f\", (b - a) / 1e9}')",
        f"sha=$(sha256sum {img} | cut -d' ' -f1); bytes=$(stat -c %s {img}); version=$({app} version)",
        "printf '{\"path\": \"%s\", \"sha256\": \"%s\", \"bytes\": %s, \"build_seconds\": %s, "
        f"\"apptainer_version\": \"%s\"}}\\n' {img} \"$sha\" \"$bytes\" \"$seconds\" \"$version\"",
    ])


class ContainerImage(pulumi.ComponentResource):
    """The workloads' image, built from workloads/apptainer.def into `folder` on shared storage."""

    def __init__(self, name: str, folder: pulumi.Input[str], apptainer: str, exec_mode: str,
                 opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:ContainerImage", name, None, opts)
        digest = image_digest()
        image = pulumi.Output.from_input(folder).apply(lambda d: f"{d.rstrip('/')}/mlops-workloads-{digest}.sif")
        self.command = local.Command(
            f"{name}-build", dir=str(REPO_ROOT), interpreter=["/bin/bash", "-c"], create=image.apply(lambda i: build_script(apptainer, i, exec_mode)),
            delete=image.apply(lambda i: "rm -f " + " ".join(shlex.quote(i + x) for x in ("", ".part", ".sha256"))),
            triggers=[digest, image], logging=local.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True))
        facts = self.command.stdout.apply(json.loads)
        self.path: pulumi.Output[str] = facts["path"]
        self.sha256: pulumi.Output[str] = facts["sha256"]
        self.facts: pulumi.Output[dict] = facts
        self.register_outputs({"path": self.path, "sha256": self.sha256})


@dataclass(frozen=True)
class ContainerRun:
    """How a job runs its workload in an image (hpc.container)."""

    image: str
    apptainer: str = "apptainer"
    exec_mode: str = "plain"
    binds: tuple[str, ...] = ()  # besides the stack's folder on shared storage
    nv: bool = False  # the config declares real GPUs: --nv on jobs that get some
    expected_sha256: Optional[str] = None  # the image the stack built; None for a site's own

    def __post_init__(self):
        if self.exec_mode not in EXEC_FLAGS:
            raise ValueError(f"hpc.container.execMode must be one of {', '.join(EXEC_FLAGS)}, not {self.exec_mode!r}")

    def exec_argv(self, shared_root: str, code_dir: str, gpus: int) -> list[str]:
        argv = [self.apptainer, "exec", *EXEC_FLAGS[self.exec_mode]]
        if self.nv and gpus:
            argv.append("--nv")
        for path in (shared_root, *self.binds):
            argv += ["--bind", path]
        return argv + ["--env", f"PYTHONPATH={code_dir}", self.image]

    def lines(self, shared_root: str) -> str:
        """The job's checks and records before the workload starts (bash, in $JOB_DIR)."""
        q = shlex.quote
        image, app, flags = q(self.image), q(self.apptainer), " ".join(map(q, EXEC_FLAGS[self.exec_mode]))
        fail = 'echo "container: $1" >&2; exit 2'
        binds = " ".join(q(b) for b in (shared_root, *self.binds))
        return "\n".join([
            f"container_fail() {{ {fail}; }}",
            f"[ -f {image} ] || container_fail \"image {self.image} does not exist on $(hostname -s)\"",
            f"for bind in {binds}; do",
            '  [ -e "$bind" ] || container_fail "bind $bind does not exist on $(hostname -s)"',
            "done",
            f"{app} exec {flags} {image} true 2> container-check.err"
            f" || container_fail \"image {self.image} does not start: $(grep -m1 . container-check.err)\"",
            # The image's sha256, measured by the first job that runs it and kept beside it for the next ones while
            # the file's size, mtime and inode stay the same (hashing several GB a job would cost more than the job).
            f"stat_now=$(stat -c '%s %Y %i' {image}); sums={q(self.image + '.sha256')}",
            'if [ -r "$sums" ] && [ "$(cut -d" " -f1-3 "$sums")" = "$stat_now" ]; then'
            ' sha=$(cut -d" " -f4 "$sums"); sha_from=cache',
            f"else sha=$(sha256sum {image} | cut -d' ' -f1); sha_from=measured"
            '; { echo "$stat_now $sha" > "$sums.$$" && mv -f "$sums.$$" "$sums"; } 2>/dev/null || true; fi',
            "cat > container_env.json <<JSON",
            f'{{"image": "{self.image}", "image_sha256": "$sha", "image_sha256_from": "$sha_from",'
            f' "apptainer_version": "$({app} version)", "exec_mode": "{self.exec_mode}",'
            f' "exec_flags": "{" ".join(EXEC_FLAGS[self.exec_mode])}", "binds": "{" ".join((shared_root, *self.binds))}"}}',
            "JSON",
        ])


def inside_fraction(containers: list[Optional[dict]], image: str, expected_sha256: Optional[str]) -> Optional[float]:
    """The share of a task's jobs whose workload recorded that it ran inside `image`: the image's /.singularity.d,
    $APPTAINER_CONTAINER naming the image, and the sha256 the job measured equal to the built one (where the stack
    built it). None when the task has no jobs."""
    if not containers:
        return None

    def inside(c: Optional[dict]) -> bool:
        seen = (c or {}).get("inside") or {}
        return bool(seen.get("image_root_marker")) and seen.get("apptainer_container") == image \
            and (expected_sha256 is None or (c or {}).get("image_sha256") == expected_sha256)

    return sum(map(inside, containers)) / len(containers)
