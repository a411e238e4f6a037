import json

from workloads import storage_check


def test_write_then_verify(tmp_path):
    shared, job1, job2 = tmp_path / "shared", tmp_path / "j1", tmp_path / "j2"
    job1.mkdir(), job2.mkdir()
    assert storage_check.main(["write", "--dir", str(shared), "--size-mb", "3", "--out-dir", str(job1)]) == 0
    written = json.loads((job1 / "metrics.json").read_text())
    assert written["bytes"] == 3 << 20 and written["checksum_ok"] and written["write_mb_per_s"] > 0
    assert written["fs_type"] != "unknown" and written["mount_point"].startswith("/")
    assert storage_check.main(["verify", "--dir", str(shared), "--out-dir", str(job2)]) == 0
    verified = json.loads((job2 / "metrics.json").read_text())
    assert verified["sha256"] == written["sha256"]


def test_verify_detects_a_changed_file(tmp_path):
    storage_check.main(["write", "--dir", str(tmp_path), "--size-mb", "1", "--out-dir", str(tmp_path)])
    with (tmp_path / storage_check.DATA_FILE).open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xfe")
    assert storage_check.main(["verify", "--dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["checksum_ok"] is False
