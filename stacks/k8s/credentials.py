"""The S3 credentials KServe's storage initializer uses to fetch models from MinIO: a Secret holding the keys
and a ServiceAccount pointing at it. KServe reads the s3-* annotations from either; both carry them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from stacks.k8s.names import MINIO, MINIO_API_PORT, S3_SECRET, SERVICE_ACCOUNT, labels, service_host


def s3_annotations(endpoint: str, region: str) -> dict:
    """KServe's S3 settings for an in-cluster MinIO: plain HTTP on the cluster network."""
    return {
        "serving.kserve.io/s3-endpoint": endpoint,  # host:port, no scheme
        "serving.kserve.io/s3-usehttps": "0",
        "serving.kserve.io/s3-verifyssl": "0",
        "serving.kserve.io/s3-region": region,
        "serving.kserve.io/s3-useanoncredential": "false",
    }


@dataclass
class S3AccessArgs:
    namespace: pulumi.Input[str]
    access_key: str  # MinIO's root user
    secret_key: pulumi.Output[str]  # a Pulumi secret
    region: str


class S3Access(pulumi.ComponentResource):
    secret_name: pulumi.Output[str]
    service_account_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: S3AccessArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("mlops:k8s:S3Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.endpoint = pulumi.Output.from_input(args.namespace).apply(
            lambda ns: f"{service_host(MINIO, ns)}:{MINIO_API_PORT}")
        annotations = self.endpoint.apply(lambda e: s3_annotations(e, args.region))
        secret = k8s.core.v1.Secret(f"{name}-secret", k8s.core.v1.SecretInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=S3_SECRET, namespace=args.namespace, labels=labels("s3"),
                                                annotations=annotations),
            type="Opaque",
            string_data=pulumi.Output.secret(pulumi.Output.all(args.access_key, args.secret_key).apply(
                lambda v: {"AWS_ACCESS_KEY_ID": v[0], "AWS_SECRET_ACCESS_KEY": v[1]})),
        ), pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stringData", "data"]))
        account = k8s.core.v1.ServiceAccount(f"{name}-sa", k8s.core.v1.ServiceAccountInitArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(name=SERVICE_ACCOUNT, namespace=args.namespace, labels=labels("s3"),
                                                annotations=annotations),
            secrets=[k8s.core.v1.ObjectReferenceArgs(name=secret.metadata.name)],
        ), child)
        self.secret_name = secret.metadata.name
        self.service_account_name = account.metadata.name
        self.register_outputs({"secret_name": self.secret_name, "service_account_name": self.service_account_name,
                               "endpoint": self.endpoint})
