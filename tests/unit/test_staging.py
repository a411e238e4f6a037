import hashlib

import pytest

from stacks.slurm.staging import check_against_sums, manifest


def _layout(tmp_path, content=b"data"):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "f.gz").write_bytes(content)
    digest = hashlib.sha256(b"data").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{digest}  mnist/f.gz\n")
    return digest


def test_check_against_sums_ok(tmp_path):
    digest = _layout(tmp_path)
    assert check_against_sums(tmp_path / "mnist", tmp_path / "SHA256SUMS", ["mnist/f.gz"]) == {"f.gz": digest}


def test_check_against_sums_missing_and_corrupt(tmp_path):
    _layout(tmp_path, content=b"tampered")
    with pytest.raises(ValueError, match="corrupt: .*f.gz"):
        check_against_sums(tmp_path / "mnist", tmp_path / "SHA256SUMS", ["mnist/f.gz"])
    with pytest.raises(FileNotFoundError, match="missing: .*g.gz"):
        check_against_sums(tmp_path / "mnist", tmp_path / "SHA256SUMS", ["mnist/g.gz"])


def test_manifest_skips_caches(tmp_path):
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"x")
    (tmp_path / "a.py").write_text("print(1)")
    assert list(manifest(tmp_path)) == ["a.py"]


def test_real_mnist_files_match_their_sums():
    from stacks.tasks.mlops_1_1 import MNIST_FILES
    from validation.config import parse
    root = __import__("pathlib").Path(parse({}).datasets_dir)
    found = check_against_sums(root / "mnist", root / "SHA256SUMS", [f"mnist/{f}" for f in MNIST_FILES])
    assert found["train-images-idx3-ubyte.gz"].startswith("440fcabf")
