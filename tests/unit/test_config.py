import pytest

from validation.config import ALL_TASKS, ConfigError, parse


def test_defaults_are_the_embedded_smoke_profile():
    s = parse({})
    assert s.profile == "smoke" and s.hpc.target == "embedded" and list(s.tasks) == list(ALL_TASKS)
    assert s.storage_mb == 64 and s.probe_jobs == 10
    assert s.shared_storage("dev") == "/tmp/mlops-validation/dev/shared"
    assert s.cluster_python().endswith(".venv-workloads/bin/python")


def test_full_profile_sizes_and_explicit_values_win():
    s = parse({"profile": "full", "storage": {"sizeMb": 10}})
    assert s.storage_mb == 10 and s.probe_jobs == 100


@pytest.mark.parametrize("raw, key, hint", [
    ({"hpc": {"target": "slurmm"}}, "mlops-validation:hpc.target", "'embedded' or 'ssh'"),
    ({"profile": "huge"}, "mlops-validation:profile", "'smoke' or 'full'"),
    ({"hpc": {"gpusPerNode": -1}}, "mlops-validation:hpc.gpusPerNode", "greater than or equal to 0"),
    ({"hpc": {"partitoin": "gpu"}}, "mlops-validation:hpc.partitoin", "Extra inputs are not permitted"),
    ({"tasks": ["mlops_9_9"]}, "mlops-validation:tasks.0", "slurm"),
    ({"hpc": {"target": "ssh"}}, "mlops-validation:hpc", "needs 'ssh: {host, port, user}'"),
    ({"hpc": {"target": "ssh", "ssh": {"host": "h", "user": "u"}}}, "mlops-validation:hpc", "sharedStorage"),
    ({"hpc": {"sharedStorage": "relative/path"}}, "mlops-validation:hpc", "absolute path"),
    ({"hpc": {"container": {"runtime": "apptainer"}}}, "mlops-validation:hpc.container", "needs 'image'"),
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
    s = parse({"hpc": {"target": "ssh", "ssh": {"host": "login", "user": "me"}, "sharedStorage": "/beegfs/x",
                       "container": {"runtime": "apptainer", "image": "/beegfs/x.sif"}}})
    assert s.hpc.ssh.port == 22 and s.shared_storage("site") == "/beegfs/x" and s.cluster_python() == "python3"
