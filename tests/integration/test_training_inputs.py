"""Bad training input at stack level: a missing dataset file ends `pulumi up` with its path, before any daemon
or job starts, so there is nothing to clean up."""
import shutil
import time

from stacks.tasks.fixtures import SFT_FILES
from tests.integration.conftest import ROOT, STATE_ROOT, TempStack, stack


def test_missing_dataset_file_fails_up_before_anything_starts(tmp_path):
    datasets = ROOT.parent / "shared" / "datasets"
    shutil.copy(datasets / "SHA256SUMS", tmp_path / "SHA256SUMS")
    (tmp_path / "sft" / "eval").mkdir(parents=True)
    for name in SFT_FILES:
        if name != "gsm8k_test.jsonl":
            shutil.copy(datasets / "sft" / name, tmp_path / "sft" / name)
    bad = TempStack("itest-nodata", f"""config:
  mlops-validation:tasks: [mlops_1_2]
  mlops-validation:datasetsDir: {tmp_path}
  mlops-validation:hpc:
    embedded: {{basePort: 31717}}
""")
    try:
        started = time.monotonic()
        proc = stack("up", bad.name, timeout=300)
        assert proc.returncode != 0 and time.monotonic() - started < 120
        assert f"dataset check failed: dataset file missing: {tmp_path}/sft/gsm8k_test.jsonl" in proc.stdout
        assert not (STATE_ROOT / bad.name).exists()  # no cluster was started
    finally:
        bad.close()
