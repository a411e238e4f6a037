from stacks.slurm.job import elapsed_seconds, parse_scontrol, render_script, workload_command


def test_render_script_has_directives_gres_and_env_capture():
    script = render_script("mnist", "/shared/jobs/mnist-1", "python -m workloads.mnist", "gpu", "gpu:1", 1, 4, 30)
    assert script.startswith("#!/bin/bash\n")
    for line in ["#SBATCH --job-name=mnist", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                 "#SBATCH --output=/shared/jobs/mnist-1/slurm-%j.out", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=4", "python -m workloads.mnist", "export JOB_DIR=/shared/jobs/mnist-1"]:
        assert line in script
    assert '"CUDA_VISIBLE_DEVICES": "${CUDA_VISIBLE_DEVICES:-}"' in script


def test_render_script_without_gres():
    assert "--gres" not in render_script("j", "/d", "true", "p", None, 1, 1, 5)


def test_parse_scontrol_one_line():
    line = ("JobId=7 JobName=probe UserId=root(0) JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:01:05 "
            "NodeList=vm Command=(null) TresPerNode=gres:gpu:1")
    f = parse_scontrol(line)
    assert f["JobState"] == "COMPLETED" and f["ExitCode"] == "0:0" and f["NodeList"] == "vm"
    assert f["TresPerNode"] == "gres:gpu:1"


def test_elapsed_seconds():
    assert elapsed_seconds("00:01:05") == 65
    assert elapsed_seconds("1-02:00:00") == 93600
    assert elapsed_seconds("03:07") == 187


def test_workload_command_plain_and_apptainer():
    plain = workload_command("/env/bin/python", "/shared/code", "workloads.mnist", "--x 1", "/shared")
    assert plain.splitlines() == ["cd /shared/code", "export PYTHONPATH=/shared/code",
                                  "/env/bin/python -m workloads.mnist --x 1"]
    boxed = workload_command("python3", "/shared/code", "workloads.mnist", "", "/shared", "/img/w.sif")
    assert "apptainer exec --nv --bind /shared --env PYTHONPATH=/shared/code /img/w.sif python3 -m workloads.mnist" in boxed


def test_workload_command_multi_task_runs_under_srun():
    cmd = workload_command("py", "/c", "workloads.cifar10", "--a", "/s", tasks=2)
    assert cmd.splitlines()[-1] == "srun --ntasks=2 --kill-on-bad-exit=1 py -m workloads.cifar10 --a"
