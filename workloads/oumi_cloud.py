"""A site's SLURM cluster as an Oumi cloud, `mlops_slurm`: Oumi's own slurm client and cluster, with what a site
needs beyond `OUMI_SLURM_CONNECTIONS` (login node's port, key and known hosts from an ssh config file the stack
writes, a partition, a default GRES, an optional Apptainer image).

Oumi loads this module from the file named in `OUMI_EXTRA_DEPS_FILE` (one .py path a line); the site is the JSON
file named in `MLOPS_OUMI_SITE`:

    {"clusters": ["root@mlops-dev"],          # user@Host, the Host being an entry of ssh_config
     "ssh_config": "/…/ssh_config",           # passed to every ssh/rsync Oumi runs (-F); never ~/.ssh/config
     "control_path": "/…/cm",                 # the ControlMaster socket (-S), per stack, closed by the stack
     "partition": "debug", "gres": "gpu:1",   # sbatch defaults for jobs that do not set their own
     "apptainer_image": null, "apptainer_binds": []}

Without MLOPS_OUMI_SITE the cloud has no clusters (so `oumi launch which` works anywhere). Imported by Oumi as a
top-level module (its folder goes on sys.path), so it imports nothing from this repository.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from oumi.core.configs import JobConfig
from oumi.core.registry import register_cloud_builder
from oumi.launcher.clients import slurm_client
from oumi.launcher.clients.slurm_client import SlurmClient
from oumi.launcher.clouds.slurm_cloud import SlurmCloud
from oumi.launcher.clusters.slurm_cluster import SlurmCluster

CLOUD_NAME = "mlops_slurm"
SITE_ENV = "MLOPS_OUMI_SITE"
RUN_MARKER = "MLOPS_OUMI_RUN"
LOG_DIR = "$HOME/oumi_slurm_logs"  # where Oumi's slurm client sends job output (<id>.out)


class SiteError(ValueError):
    """The site file is wrong; the message names the key."""


@dataclass(frozen=True)
class Site:
    clusters: list[str]
    ssh_config: str
    control_path: str
    partition: Optional[str] = None
    gres: Optional[str] = None
    apptainer_image: Optional[str] = None
    apptainer_binds: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str) -> "Site":
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SiteError(f"{SITE_ENV}={path}: cannot read the site file ({e})") from None
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SiteError(f"{path}: unknown key(s) {sorted(unknown)}")
        for key in ("clusters", "ssh_config", "control_path"):
            if not raw.get(key):
                raise SiteError(f"{path}: '{key}' is required")
        for name in raw["clusters"]:
            SlurmCluster.parse_cluster_name(name)  # user@host, Oumi's own check and message
        for key in ("ssh_config", "control_path"):
            # Oumi splices these into shell command lines (rsync -e "ssh …"): no spaces or quotes.
            if any(c in raw[key] for c in " \t\"'$`\\"):
                raise SiteError(f"{path}: '{key}' must be a path without spaces or quotes (got {raw[key]!r})")
        if not Path(raw["ssh_config"]).is_file():
            raise SiteError(f"{path}: ssh_config {raw['ssh_config']} does not exist")
        return cls(**raw)

    @property
    def ssh_options(self) -> str:
        """What Oumi's client puts after `ssh` in every command it runs (master, commands, rsync, log tail)."""
        return f"-F {self.ssh_config} -S {self.control_path}"


def in_apptainer(run: str, image: str, binds: list[str]) -> str:
    """The job's run script with its body (everything after the #SBATCH lines) run inside the Apptainer image;
    the host environment (Oumi's `envs` exports) passes through, as apptainer does by default."""
    lines = run.strip("\n").split("\n")
    last_sbatch = max((i for i, line in enumerate(lines) if line.startswith("#SBATCH")), default=-1)
    header, body = lines[:last_sbatch + 1], lines[last_sbatch + 1:]
    if any(line.strip() == RUN_MARKER for line in body):
        raise ValueError(f"the run script may not contain a line '{RUN_MARKER}'")
    bind = "".join(f" --bind {shlex.quote(b)}" for b in binds)
    wrapped = [f"{RUN_MARKER}=$(cat <<'{RUN_MARKER}'", *body, RUN_MARKER, ")",
               f"apptainer exec --nv{bind} {shlex.quote(image)} bash -c \"${RUN_MARKER}\""]
    return "\n".join(header + wrapped) + "\n"


class SiteSlurmClient(SlurmClient):
    """Oumi's client, submitting with the site's partition and GRES when the job names none."""

    def __init__(self, site: Site, user: str, slurm_host: str, cluster_name: str):
        self._site = site
        super().__init__(user=user, slurm_host=slurm_host, cluster_name=cluster_name)

    def submit_job(self, job_path, working_dir, node_count, name, *, partition=None, **kwargs) -> str:
        # Oumi sends the job's output to ~/oumi_slurm_logs/<id>.out but never makes that folder; without it
        # slurmd cannot open the file and the job fails at launch (JobLaunchFailure).
        made = self.run_commands([f'mkdir -p "{LOG_DIR}"'])
        if made.exit_code != 0:
            raise RuntimeError(f"cannot make {LOG_DIR} on {self._cluster_name}: {made.stderr.strip()}")
        if self._site.gres and "gres" not in kwargs:
            kwargs["gres"] = self._site.gres
        return super().submit_job(job_path, working_dir, node_count, name,
                                  partition=partition or self._site.partition, **kwargs)


class SiteSlurmCluster(SlurmCluster):
    def __init__(self, name: str, client: SiteSlurmClient, site: Site):
        self._site = site
        super().__init__(name, client)

    def run_job(self, job: JobConfig):
        # Oumi's slurm cluster checks that resources.cloud is "slurm": it is, underneath.
        job = dataclasses.replace(job, resources=dataclasses.replace(job.resources, cloud="slurm"))
        if job.working_dir and not job.working_dir.endswith("/"):
            # Oumi rsyncs working_dir to ~/oumi_launcher/<time> and submits from there; without the slash rsync
            # would copy the folder itself one level down, and the job would not find its files.
            job = dataclasses.replace(job, working_dir=job.working_dir + "/")
        if self._site.apptainer_image:
            job = dataclasses.replace(job, run=in_apptainer(job.run, self._site.apptainer_image,
                                                            self._site.apptainer_binds))
        return super().run_job(job)


class SiteSlurmCloud(SlurmCloud):
    def __init__(self, site: Optional[Site]):
        self._site = site
        super().__init__()

    def initialize_clusters(self):
        return [self._get_or_create_cluster(name) for name in (self._site.clusters if self._site else [])]

    def _get_or_create_cluster(self, name: str) -> SlurmCluster:
        if self._site is None:
            raise ValueError(f"cloud {CLOUD_NAME} has no site: set {SITE_ENV} to the site file")
        if name not in self._clusters:
            info = SlurmCluster.parse_cluster_name(name)
            client = SiteSlurmClient(self._site, user=info.user, slurm_host=info.hostname, cluster_name=info.name)
            self._clusters[name] = SiteSlurmCluster(name, client, self._site)
        return self._clusters[name]


@register_cloud_builder(CLOUD_NAME)
def site_slurm_cloud_builder() -> SiteSlurmCloud:
    path = os.environ.get(SITE_ENV)
    site = Site.load(path) if path else None
    if site is not None:
        # Oumi's slurm client has one hook for its ssh options: the module constant it puts after `ssh` in each
        # command (default "-S ~/.ssh/control-%h-%p-%r"). Point it at the stack's ssh config and socket.
        slurm_client._CTRL_PATH = site.ssh_options
    return SiteSlurmCloud(site)
