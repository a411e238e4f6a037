"""The task registry (stacks/tasks/): one module a task is all it takes, and the order, data check, config, stack
output and report all follow from it."""
import sys
import textwrap

import pulumi
import pytest
import yaml

from stacks import tasks
from stacks.tasks import Measured, TASKS, build_order, data_needs, discover
from validation.config import ConfigError, parse
from validation.config.base import REPO_ROOT
from validation.report import render
from validation.targets import all_targets
from validation.verdict import overall

NO_GPU = {"gpu": None, "gpus_per_node": 2, "kubernetes": False}


def test_the_registry_is_the_task_list_of_the_shipped_stacks():
    names = [t.name for t in TASKS]
    assert names[:3] == ["gpu_health", "slurm", "storage"] and names[3:] == sorted(names[3:])  # platform first
    for stack in ("dev", "itest"):
        config = yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert config["mlops-validation:tasks"] == names
    assert {t.task for t in all_targets()} <= set(names)  # every target row belongs to a task
    assert all(t.title and t.name for t in TASKS)


def test_tasks_come_after_the_tasks_they_use():
    order = [t.name for t in build_order([t.name for t in TASKS])]
    for task in TASKS:
        for used in task.uses:
            assert order.index(used) < order.index(task.name), (task.name, used)
    # a used task that is not enabled is no dependency
    assert [t.name for t in build_order(["mlops_4_2", "slurm"])] == ["slurm", "mlops_4_2"]


def test_data_needs_are_the_union_of_the_enabled_tasks():
    needs = data_needs(["mlops_1_2", "mlops_3_2", "mlops_1_1"])
    assert set(needs) == {"sft", "mnist"} and len(needs["sft"]) == len(set(needs["sft"])) == 4
    assert data_needs(["slurm"]) == {}


TOY = '''
from stacks.tasks import Measured, Task
from validation.plots import Plot, loss


class ToyTraining(Task):
    name = "mlops_9_1"
    spec = "MLOPS-9.1"
    title = "MLOPS-9.1 A toy training task"
    data = {"mnist": ("t10k-labels-idx1-ubyte.gz",)}
    uses = ("mlops_1_1",)
    gpu = True
    plots = (Plot("toy_loss.png", loss("Toy", "epoch")),)

    @classmethod
    def check(cls, settings):
        return None if settings.hpc.gpus_per_node else "needs a GPU: set hpc.gpusPerNode"

    def build(self, run):
        return Measured(metrics={"loss_curve": [2.0, 1.0], "train_seconds": 3.0})
'''


@pytest.fixture
def toy_registry(tmp_path, monkeypatch):
    package = tmp_path / "toytasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = TASKS + discover([str(package)], "toytasks")
    registry = tuple(sorted(registry, key=lambda t: ("" if t.spec == "platform" else t.spec, t.name)))
    monkeypatch.setattr(tasks, "TASKS", registry)
    yield registry
    for name in [m for m in sys.modules if m.startswith("toytasks")]:
        del sys.modules[name]


def test_a_toy_task_added_as_one_module_is_in_config_order_data_outputs_and_report(toy_registry, tmp_path):
    toy = next(t for t in toy_registry if t.name == "mlops_9_1")
    assert [t for t in toy_registry if t.spec.startswith("MLOPS-")][-1] is toy  # after MLOPS-5.1, as the matrix lists it
    # the config schema knows it, and its own check speaks for it
    assert parse({"tasks": ["mlops_1_1", "mlops_9_1"]}).tasks == ["mlops_1_1", "mlops_9_1"]
    with pytest.raises(ConfigError, match="mlops-validation:tasks: mlops_9_1 needs a GPU: set hpc.gpusPerNode"):
        parse({"tasks": ["mlops_9_1"], "hpc": {"gpusPerNode": 0}})
    enabled = ["mlops_9_1", "mlops_1_1"]
    assert [t.name for t in build_order(enabled, toy_registry)] == ["mlops_1_1", "mlops_9_1"]
    assert data_needs(enabled, toy_registry)["mnist"][-1] == "t10k-labels-idx1-ubyte.gz"

    # its stack output, as __main__ exports it
    pulumi.runtime.set_mocks(_NoResources(), project="mlops-validation", stack="toy", preview=False)
    exported = {}

    @pulumi.runtime.test
    def build():
        measured = toy().build(run=None)
        return tasks.result(toy, measured, NO_GPU).apply(exported.update)

    build()
    assert exported["metrics"]["train_seconds"] == 3.0 and exported["platform"] == NO_GPU
    assert exported["targets"] == [] and exported["summary"]["pass"] == 0

    outputs = {"validation": {"stack": "toy", "tasks": ["mlops_9_1"], "platform": NO_GPU},
               "_run": {"exit_code": 0}, "mlops_9_1": exported}
    text = render(outputs, tmp_path, tasks=toy_registry)
    assert "## MLOPS-9.1 A toy training task" in text and "![toy_loss.png](toy_loss.png)" in text
    # a task with no target that passed cannot make the run PASS
    assert overall(outputs)["status"] == "FAIL"
    without_output = {k: v for k, v in outputs.items() if k != "mlops_9_1"}
    assert overall(without_output)["status"] == "FAIL" and "mlops_9_1" in " ".join(overall(without_output)["reasons"])


class _NoResources(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return [f"{args.name}-id", args.inputs]

    def call(self, args):
        return {}


def test_measured_defaults_say_the_platform_check_holds_on_any_hardware():
    assert Measured(metrics={}).observed == {"device": "n/a"}


def test_every_task_judged_on_a_gpu_says_what_it_ran_on():
    # A task with GPU-scoped targets that reports no device fails them all where GPUs are declared (the first
    # `pulumi up` on an H200 found MLOPS-5.1 so): its build must hand the judge what it observed.
    import inspect

    judged_on_gpu = {t.task for t in all_targets() if str(t.applies_to).startswith("gpu")}
    assert judged_on_gpu
    for task in TASKS:
        if task.name in judged_on_gpu:
            assert "observed=" in inspect.getsource(task.build), f"{task.name} has GPU targets but no `observed`"
