"""The monitoring task's plain parts: its config section, the generated Prometheus and Alertmanager configs, the
daemons it declares (under Pulumi mocks: every one on 127.0.0.1, Alertmanager's gossip off, the rule files
written beside Prometheus' config), the check's reading of query results and dashboards, and its judged
metrics. The real processes run in the integration stack; no timings are asserted here."""
from __future__ import annotations

import json

import pulumi
import pytest
import yaml

from stacks.monitoring import ScrapeTarget, alertmanager_config, prometheus_config, rule_files
from stacks.tasks.monitoring import DASHBOARDS
from validation.config import ConfigError, parse
from validation.targets import task_result
from workloads.monitoring_check import dashboard_queries, has_data

PLATFORM = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}


def test_config_defaults_and_bad_values_name_the_key():
    s = parse({})
    assert s.monitoring.base_port == 16950 and s.monitoring_state_dir("dev") == "/tmp/mlops-validation/dev-monitoring"
    assert "monitoring" in s.tasks
    with pytest.raises(ConfigError, match="mlops-validation:monitoring.basePort"):
        parse({"monitoring": {"basePort": 80}})
    with pytest.raises(ConfigError, match="mlops-validation:tasks: monitoring monitoring stops a predictor"):
        parse({"tasks": ["slurm", "monitoring"]})


def test_prometheus_config_scrapes_every_target_and_sends_alerts():
    targets = [ScrapeTarget("predictors", "127.0.0.1:16903", {"model_name": "mnist"}),
               ScrapeTarget("predictors", "127.0.0.1:16904", {"model_name": "smollm2"}),
               ScrapeTarget("minio", "127.0.0.1:16900", metrics_path="/minio/v2/metrics/cluster")]
    config = yaml.safe_load(prometheus_config(targets, "127.0.0.1:16951", ["/x/rules/platform.yml"], 2.0))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert [c["labels"]["model_name"] for c in jobs["predictors"]["static_configs"]] == ["mnist", "smollm2"]
    assert jobs["minio"]["metrics_path"] == "/minio/v2/metrics/cluster"
    assert config["global"]["scrape_interval"] == "2000ms" and config["rule_files"] == ["/x/rules/platform.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:16951"]
    route = yaml.safe_load(alertmanager_config())
    assert route["route"]["receiver"] == route["receivers"][0]["name"]


class Recorder(pulumi.runtime.Mocks):
    def __init__(self):
        self.resources: dict[str, dict] = {}

    def new_resource(self, args):
        self.resources[args.name] = args.inputs
        return [f"{args.name}-id", args.inputs]

    def call(self, args):
        return {}


def test_the_daemons_bind_loopback_and_prometheus_gets_the_rules():
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="mlops-validation", stack="montest", preview=False)
    from stacks.monitoring import Monitoring, MonitoringArgs

    @pulumi.runtime.test
    def build():
        stack = Monitoring("monitoring", MonitoringArgs(
            state_dir="/tmp/m", base_port=21950, scrape_interval_s=2.0, slurm_conf="/tmp/s/slurm.conf",
            targets=[ScrapeTarget("predictors", "127.0.0.1:21903", {"model_name": "mnist"})]))
        return pulumi.Output.all(*[d.id for d in stack.daemons])

    build()
    daemons = {r["name"]: r for r in recorder.resources.values() if "argv" in r}
    assert set(daemons) == {"node exporter", "SLURM exporter", "Alertmanager", "Prometheus"}
    for d in daemons.values():
        assert d["ready_url"].startswith("http://127.0.0.1:2195")
        listen = [a for a in d["argv"] if "listen-address=" in a and "cluster" not in a] or \
            [d["argv"][d["argv"].index("--port") + 1]]
        assert all("0.0.0.0" not in a for a in d["argv"]) and listen
    assert "--cluster.listen-address=" in daemons["Alertmanager"]["argv"]  # no gossip on every interface
    assert daemons["SLURM exporter"]["env"] == {"SLURM_CONF": "/tmp/s/slurm.conf"}
    files = daemons["Prometheus"]["files"]
    config = yaml.safe_load(files["/tmp/m/prometheus.yml"])
    assert {j["job_name"] for j in config["scrape_configs"]} == {"predictors", "node", "slurm", "prometheus",
                                                                 "alertmanager"}
    assert {f"/tmp/m/rules/{n}" for n in rule_files()} == set(config["rule_files"]) <= set(files)


def test_no_data_is_nan_or_nothing():
    assert has_data([{"value": [1, "0.004"]}]) and has_data([{"value": [1, "NaN"]}, {"value": [1, "0"]}])
    assert not has_data([]) and not has_data([{"value": [1, "NaN"]}])


def test_every_dashboard_panel_has_a_query():
    queries = dashboard_queries(DASHBOARDS)
    boards = {json.loads(open(p).read())["title"] for p in DASHBOARDS}
    assert len(DASHBOARDS) == 3 and {q["dashboard"] for q in queries} == boards
    assert all(q["expr"] and q["panel"] for q in queries)


def test_the_metrics_are_judged_and_a_fault_that_never_alerts_fails():
    good = {"targets_up_fraction": 1.0, "series_fresh_fraction": 1.0, "rules_loaded_fraction": 1.0,
            "panels_with_data_fraction": 1.0, "requests_counted_fraction": 1.0, "alert_quiet_before": True,
            "alert_fire_seconds": 9.0, "alert_resolve_seconds": 2.5, "job_failure_alert_fire_seconds": 2.0,
            "job_failure_alert_resolve_seconds": 33.0}
    verdicts = {t["id"]: t["status"] for t in task_result("monitoring", good, {"device": "n/a"}, PLATFORM)["targets"]}
    assert set(verdicts.values()) == {"pass"} and len(verdicts) == 10
    broken = {**good, "targets_up_fraction": 0.8, "alert_fire_seconds": None, "alert_resolve_seconds": None}
    verdicts = {t["id"]: t["status"] for t in task_result("monitoring", broken, {"device": "n/a"}, PLATFORM)["targets"]}
    assert verdicts["monitoring_targets_up"] == "fail"
    assert verdicts["monitoring_alert_fires"] in ("fail", "missing")
