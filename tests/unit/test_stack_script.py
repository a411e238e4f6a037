"""tools/stack.sh refuses the embedded default's published passphrase for a stack the repo does not ship for this
machine, before Pulumi is run (so no site secret is ever encrypted with it)."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _stack_sh(action: str, name: str, passphrase: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PULUMI_CONFIG_PASSPHRASE": passphrase, "PATH": "/usr/bin:/bin"}  # no pulumi on PATH
    return subprocess.run(["bash", "tools/stack.sh", action, name], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_a_site_stack_with_the_public_passphrase_is_refused_naming_the_fix():
    site = ROOT / "Pulumi.unit-site-check.yaml"
    site.write_text((ROOT / "examples" / "Pulumi.mysite.yaml").read_text())
    try:
        for action in ("up", "preview"):
            proc = _stack_sh(action, "unit-site-check", "mlops-validation-dev-only")
            assert proc.returncode == 2, proc.stderr
            assert "public passphrase: export PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE" in proc.stderr
        # with a passphrase of its own it gets past the check (and then needs pulumi, absent from this PATH)
        proc = _stack_sh("preview", "unit-site-check", "a-site-secret-passphrase")
        assert "public passphrase" not in proc.stderr
    finally:
        site.unlink()
