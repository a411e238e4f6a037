import pytest

from stacks.tasks import TASKS
from validation.config import PROFILES, Settings, ConfigError, parse


def test_defaults_are_the_embedded_smoke_profile():
    s = parse({})
    assert s.profile == "smoke" and s.hpc.target == "embedded" and s.tasks == [t.name for t in TASKS]
    assert s.option("storage.size_mb") == 64 and s.option("slurm_probe.jobs") == 10
    assert s.platform == {"gpu": None, "gpu_key": "hpc.gpu", "gpus_per_node": 2, "kubernetes": False,
                          "container": False}
    assert s.shared_storage("dev") == "/tmp/mlops-validation/dev/shared"
    assert s.cluster_python().endswith(".venv-workloads/bin/python")


def test_full_profile_sizes_and_explicit_values_win():
    s = parse({"profile": "full", "storage": {"sizeMb": 10}})
    assert s.option("storage.size_mb") == 10 and s.option("slurm_probe.jobs") == 100
    assert s.option("llm.max_steps") == 100  # the profile's
    assert s.option("llm.seq_len") is None  # neither the stack nor the profile: the workload's default


def test_every_profile_value_names_a_real_setting():
    for profile, values in PROFILES.items():
        settings = Settings(profile=profile)
        for path in values:
            node = settings
            for part in path.split("."):
                assert part in type(node).model_fields, f"profile {profile}: {path} is no config setting"
                node = getattr(node, part) or type(node).model_fields[part].annotation


def test_declared_gpu_decides_where_gpu_targets_apply():
    site = {"target": "ssh", "ssh": {"host": "login", "user": "me"}, "sharedStorage": "/beegfs/x"}
    assert parse({"hpc": {**site, "gpu": "NVIDIA H200"}}).platform["gpu"] == "NVIDIA H200"
    assert parse({"hpc": {**site, "gpu": "none"}}).platform["gpu"] is None
    assert parse({"hpc": {**site, "gpusPerNode": 0}, "tasks": ["slurm"]}).platform["gpu"] is None
    with pytest.raises(ConfigError, match="mlops-validation:hpc: gpusPerNode is 2: name the GPU model in 'gpu'"):
        parse({"hpc": site})


@pytest.mark.parametrize("raw, key, hint", [
    ({"hpc": {"target": "slurmm"}}, "mlops-validation:hpc.target", "'embedded' or 'ssh'"),
    ({"profile": "huge"}, "mlops-validation:profile", "'smoke' or 'full'"),
    ({"hpc": {"gpusPerNode": -1}}, "mlops-validation:hpc.gpusPerNode", "greater than or equal to 0"),
    ({"hpc": {"partitoin": "gpu"}}, "mlops-validation:hpc.partitoin", "Extra inputs are not permitted"),
    ({"tasks": ["mlops_9_9"]}, "mlops-validation:tasks", "unknown task(s) mlops_9_9; the tasks are: gpu_health, slurm"),
    ({"tasks": ["slurm", "slurm"]}, "mlops-validation:tasks", "listed twice"),
    ({"hpc": {"gpusPerNode": 0}}, "mlops-validation:tasks: gpu_health", "hpc.gpusPerNode is 0"),
    ({"hpc": {"gpusPerNode": 0}, "tasks": ["mlops_2_1"]}, "mlops-validation:tasks: mlops_2_1", "hpc.gpusPerNode is 0"),
    ({"hpc": {"target": "ssh"}}, "mlops-validation:hpc", "needs 'ssh: {host, port, user}'"),
    ({"hpc": {"target": "ssh", "ssh": {"host": "h", "user": "u"}}}, "mlops-validation:hpc", "sharedStorage"),
    ({"hpc": {"sharedStorage": "relative/path"}}, "mlops-validation:hpc", "absolute path"),
    ({"hpc": {"container": {"runtime": "apptainer", "image": "w.sif"}}}, "mlops-validation:hpc.container",
     "absolute paths"),
    ({"hpc": {"embedded": {"basePort": 80}}}, "mlops-validation:hpc.embedded.basePort", "1024"),
    ({"datasetsDir": "/no/such/dir"}, "mlops-validation:datasetsDir", "no such directory"),
])
def test_bad_value_names_the_key_and_what_is_allowed(raw, key, hint):
    with pytest.raises(ConfigError) as err:
        parse(raw)
    message = str(err.value)
    assert key in message and hint in message
    assert "\n" not in message  # one line


def test_site_settings():
    s = parse({"hpc": {"target": "ssh", "ssh": {"host": "login", "user": "me"}, "sharedStorage": "/beegfs/x", "gpu": "H200",
                       "container": {"runtime": "apptainer", "image": "/beegfs/x.sif"}}})
    assert s.hpc.ssh.port == 22 and s.shared_storage("site") == "/beegfs/x" and s.cluster_python() == "python3"
