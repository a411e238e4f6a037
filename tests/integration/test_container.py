"""hpc.container for real: a throwaway stack on the embedded cluster with `hpc.container` set builds the workloads'
image from workloads/apptainer.def, runs the storage check and MNIST inside it with Apptainer, exports what each job
measured of the container, and removes the image on destroy."""
from __future__ import annotations

import time

from validation.verdict import overall
from tests.integration.conftest import STATE_ROOT, TempStack, outputs, stack, wait_for_no_leftovers

PORT = 31847
CONFIG = f"""config:
  mlops-validation:profile: smoke
  mlops-validation:tasks: [slurm, storage, mlops_1_1]
  mlops-validation:hpc:
    target: embedded
    gpusPerNode: 2
    gpu: none
    embedded: {{basePort: {PORT}}}
    container: {{runtime: apptainer}}
"""


def test_jobs_run_inside_the_image_the_stack_built():
    site = TempStack("itest-container", CONFIG)
    try:
        started = time.monotonic()
        proc = stack("up", site.name, timeout=1800)
        print(f"\n[itest-container] pulumi up took {time.monotonic() - started:.1f} s")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
        out = outputs(site.name)
        verdict = overall(out)
        assert verdict["status"] == "PASS", "\n".join(verdict["reasons"])
        image = out["container_image"]
        assert image["apptainer_version"] == "1.5.3" and len(image["sha256"]) == 64 and image["bytes"] > 0
        print(f"[itest-container] image built in {image['build_seconds']} s, {image['bytes'] / 2**30:.2f} GiB")
        for task, jobs in (("storage", 2), ("mlops_1_1", 1)):
            result = out[task]
            verdicts = {t["id"]: t["status"] for t in result["targets"]}
            assert verdicts[f"{task}_in_container"] == "pass" and result["summary"]["fail"] == 0, result["targets"]
            facts = result["metrics"]["container"]
            assert facts["image"] == image["path"] and facts["built_sha256"] == image["sha256"]
            assert len(facts["jobs"]) == jobs
            for name, job in facts["jobs"].items():
                # measured by the job on the node, and by the workload's own process inside the image
                assert job["image_sha256"] == image["sha256"] and job["apptainer_version"] == "1.5.3", name
                assert job["exec_mode"] == "no-privs" and job["exec_flags"] == "--no-privs", name
                inside = job["inside"]
                assert inside["image_root_marker"] is True and inside["apptainer_container"] == image["path"], name
                assert inside["python_executable"] == "/usr/bin/python3" and inside["python_version"].startswith("3.11")
                assert inside["torch_dir"].startswith("/opt/mlops-workloads/") and inside["torch_version"], name
                assert inside["os"].startswith("Debian GNU/Linux 12"), name
        assert out["mlops_1_1"]["metrics"]["test_accuracy"] > 0.95
        assert out["storage"]["metrics"]["cross_job_checksum_ok"] == 1
        assert "container" in out["mlops_1_1"]["job"]  # the job summary carries the facts too
    finally:
        site.close()
    assert not wait_for_no_leftovers([str(STATE_ROOT / site.name)], [PORT, PORT + 1, PORT + 2])
    assert not (STATE_ROOT / site.name).exists(), "state folder (and the image in it) left behind"
