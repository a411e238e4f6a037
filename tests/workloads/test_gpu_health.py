"""GPU health's reading of NVML (a fake NVML here: no GPU in CI) and the figures its targets judge."""
import json
import sys
import types

from workloads import gpu_health


class NotSupported(Exception):
    pass


def fake_nvml(gpus: list[dict]) -> types.ModuleType:
    """An NVML whose answers come from `gpus` (one dict a GPU); a missing answer raises as NotSupported does."""
    nvml = types.ModuleType("pynvml")
    consts = dict(NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1, NVML_MEMORY_ERROR_TYPE_CORRECTED=0, NVML_VOLATILE_ECC=0,
                  NVML_AGGREGATE_ECC=1, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR=1,
                  NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
                  NVML_TEMPERATURE_GPU=0, NVML_NVLINK_MAX_LINKS=18)
    vars(nvml).update(consts)

    def answer(key):
        def fn(h, *args):
            value = gpus[h].get(key)
            if value is None:
                raise NotSupported(key)
            return value(*args) if callable(value) else value
        return fn

    for name in ("Name", "UUID", "EccMode", "TotalEccErrors", "RemappedRows", "RetiredPages",
                 "RetiredPagesPendingStatus", "CurrentClocksEventReasons", "NvLinkState", "PowerUsage",
                 "EnforcedPowerLimit", "ClockInfo", "MaxClockInfo", "Temperature", "CurrPcieLinkGeneration",
                 "MaxPcieLinkGeneration", "CurrPcieLinkWidth", "MaxPcieLinkWidth"):
        setattr(nvml, f"nvmlDeviceGet{name}", answer(name))
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlSystemGetDriverVersion = lambda: b"580.95"
    nvml.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    nvml.nvmlSystemGetNVMLVersion = lambda: "13.580"
    return nvml


def healthy(**overrides) -> dict:
    gpu = {"Name": b"NVIDIA H200", "UUID": "GPU-1", "EccMode": (1, 1), "TotalEccErrors": lambda kind, where: 0,
           "RemappedRows": (0, 0, 0, 0), "RetiredPages": [], "RetiredPagesPendingStatus": 0,
           "CurrentClocksEventReasons": 0x1,  # GPU idle
           "NvLinkState": lambda link: 1, "PowerUsage": 75000, "EnforcedPowerLimit": 700000,
           "ClockInfo": lambda c: 345, "MaxClockInfo": lambda c: 1980, "Temperature": lambda s: 31,
           "CurrPcieLinkGeneration": 5, "MaxPcieLinkGeneration": 5, "CurrPcieLinkWidth": 16, "MaxPcieLinkWidth": 16}
    return {**gpu, **overrides}


def run(monkeypatch, tmp_path, gpus, visible="0,1"):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(gpus))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", str(len(visible.split(","))))
    assert gpu_health.main(["--out-dir", str(tmp_path)]) == 0
    return json.loads((tmp_path / "metrics.json").read_text())


def test_a_healthy_pair_passes_every_check(monkeypatch, tmp_path):
    m = run(monkeypatch, tmp_path, [healthy(), healthy(UUID="GPU-2")])
    assert m["nvml_available"] and m["device"] == "cuda" and m["device_name"] == "NVIDIA H200"
    assert (m["gpu_count"], m["gpu_count_matches"], m["cuda_driver_version"]) == (2, 1, "13.0")
    assert m["ecc_uncorrected_volatile"] == 0 and m["memory_retirement_pending_or_failed"] == 0
    assert m["throttled_gpus"] == 0 and m["nvlink_degraded_gpus"] == 0 and m["nvlink_links_active_min"] == 18
    assert m["gpus"][0]["power_w"] == 75.0 and m["gpus"][0]["sm_clock_max_mhz"] == 1980


def test_errors_throttling_and_a_down_link_are_counted(monkeypatch, tmp_path):
    sick = healthy(UUID="GPU-2", TotalEccErrors=lambda kind, where: 3 if kind == 1 else 0,
                   RemappedRows=(0, 1, 1, 0), CurrentClocksEventReasons=0x40,  # HW thermal slowdown
                   NvLinkState=lambda link: 0 if link == 5 else 1)
    m = run(monkeypatch, tmp_path, [healthy(), sick])
    assert m["ecc_uncorrected_volatile"] == 3 and m["memory_retirement_pending_or_failed"] == 1
    assert m["throttled_gpus"] == 1 and m["gpus"][1]["held_back_by"] == ["hw_thermal"]
    assert m["nvlink_degraded_gpus"] == 1 and m["nvlink_links_active_min"] == 17


def test_unsupported_queries_are_none_not_a_crash_and_one_gpu_has_no_neighbours(monkeypatch, tmp_path):
    m = run(monkeypatch, tmp_path, [healthy(RemappedRows=None, NvLinkState=None, EnforcedPowerLimit=None)],
            visible="0")
    assert m["gpus"][0]["remapped_rows"] is None and m["gpus"][0]["power_limit_w"] is None
    assert m["nvlink_degraded_gpus"] == 0 and m["gpu_count_matches"] == 1


def test_without_nvml_the_figures_are_missing_and_say_why(monkeypatch, tmp_path):
    broken = types.ModuleType("pynvml")

    def no_driver():
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    broken.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpu_health.main(["--out-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert not m["nvml_available"] and "libnvidia-ml" in m["note"] and m["device"] == "none"
    assert m["ecc_uncorrected_volatile"] is None and m["gpu_count_matches"] is None
