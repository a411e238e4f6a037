"""Serving workloads (MLOPS-4.1, 4.2, 5.1): KServe predictors, model publishing to MinIO, MLflow registration
and the locust load test. Like every workload they import no Pulumi; credentials come from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL, what KServe's storage initializer reads), never
from argv, which any process listing shows.
"""
