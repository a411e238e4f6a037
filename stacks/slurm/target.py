"""The HPC target: where jobs go. The embedded default starts its own SLURM and login node; a real site
names its login node in `Pulumi.<site>.yaml` and its key as the secret `sshPrivateKey`.

Either way the rest of the program sees the same thing: a connection to a login node, a cluster id
(a new cluster re-runs everything) and a folder on shared storage for this stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi

from stacks.slurm.embedded import EmbeddedSlurmCluster, EmbeddedSlurmClusterArgs
from validation.config import Settings


@dataclass
class HpcTargetArgs:
    settings: Settings
    stack: str
    ssh_private_key: Optional[pulumi.Output[str]] = None


class HpcTarget(pulumi.ComponentResource):
    connection: pulumi.Output[dict]  # stacks/remote.py Connection fields; secret (it holds the key)
    cluster_id: pulumi.Output[str]
    root: pulumi.Output[str]  # this stack's folder on shared storage

    def __init__(self, name: str, args: HpcTargetArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:hpc:Target", name, None, opts)
        s, hpc = args.settings, args.settings.hpc
        if hpc.target == "embedded":
            cluster = EmbeddedSlurmCluster(f"{name}-slurm", EmbeddedSlurmClusterArgs(
                state_dir=s.state_dir(args.stack), partition=hpc.partition, gpus_per_node=hpc.gpus_per_node,
                base_port=hpc.embedded.base_port, cpus=hpc.embedded.cpus, gpu_model=hpc.gpu_model), pulumi.ResourceOptions(parent=self))
            if hpc.embedded.submit_via == "local":
                self.connection = cluster.slurm_conf.apply(
                    lambda conf: {"kind": "local", "env": {"SLURM_CONF": conf}})
            else:
                self.connection = pulumi.Output.all(cluster.ssh_port, cluster.private_key, cluster.known_hosts).apply(
                    lambda v: {"kind": "ssh", "host": "127.0.0.1", "port": v[0], "user": "root",
                               "private_key": v[1], "known_hosts": v[2]})
            self.cluster_id = cluster.id_
            self.slurm_conf = cluster.slurm_conf  # what this machine's SLURM commands read (the monitoring task)
            # The login node as a site stack would name it (the integration tests point one at it).
            self.login = cluster.ssh_port.apply(lambda p: {"host": "127.0.0.1", "port": p, "user": "root"})
            self.login_private_key = cluster.private_key
            self.login_known_hosts = cluster.known_hosts
            shared = cluster.shared_storage
            self.where = pulumi.Output.concat("embedded single-node SLURM on 127.0.0.1 (", hpc.embedded.submit_via,
                                              " submission)")
        else:
            ssh = hpc.ssh
            self.connection = args.ssh_private_key.apply(
                lambda key: {"kind": "ssh", "host": ssh.host, "port": ssh.port, "user": ssh.user,
                             "private_key": key, "connect_timeout": ssh.connect_timeout_seconds,
                             "known_hosts": ssh.known_hosts_file})
            self.cluster_id = pulumi.Output.from_input(f"{ssh.user}@{ssh.host}:{ssh.port}")
            self.slurm_conf = None
            shared = pulumi.Output.from_input(s.shared_storage(args.stack))
            self.login = self.login_private_key = self.login_known_hosts = None
            self.where = pulumi.Output.from_input(f"SLURM login node {ssh.user}@{ssh.host}:{ssh.port}")
        self.connection = pulumi.Output.secret(self.connection)
        self.root = shared.apply(lambda p: f"{p.rstrip('/')}/mlops-validation/{args.stack}")
        self.register_outputs({"cluster_id": self.cluster_id, "root": self.root})
