"""GPU utilization sampled through NVML (nvidia-ml-py) in a background thread while training runs.

NVML's utilization.gpu is the percent of the last sample period (1/6 s to 1 s, driver-chosen) during which at
least one kernel ran; the mean over the training loop says how busy the job kept the GPU.
"""
from __future__ import annotations

import os
import threading
from typing import Optional


class GpuUtilizationSampler:
    def __init__(self, torch_device_index: Optional[int] = 0, interval_s: float = 0.1):
        self.torch_device_index = torch_device_index or 0  # torch.device("cuda").index is None: cuda:0
        self.interval_s = interval_s
        self.samples: list[int] = []
        self.note: Optional[str] = None
        self.driver_version: Optional[str] = None
        self._nvml = None
        self._handle = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> bool:
        """Begin sampling; False (with .note saying why) when NVML can't be used."""
        try:
            import pynvml  # from nvidia-ml-py
            pynvml.nvmlInit()
        except Exception as e:  # package missing, or no driver library: report, don't fail the training
            self.note = f"NVML unavailable: {type(e).__name__}: {e}"
            return False
        self._nvml = pynvml
        try:
            self.driver_version = _str(pynvml.nvmlSystemGetDriverVersion())
            self._handle = self._find_handle(pynvml)
            pynvml.nvmlDeviceGetUtilizationRates(self._handle)  # fail here, not silently in the thread
        except Exception as e:
            self.note = f"NVML could not read the GPU: {type(e).__name__}: {e}"
            pynvml.nvmlShutdown()
            self._nvml = None
            return False
        self._thread = threading.Thread(target=self._run, name="gpu-util-sampler", daemon=True)
        self._thread.start()
        return True

    def _find_handle(self, pynvml):
        # torch's cuda:N is the N-th *visible* device, NVML counts all of them: match by UUID so that
        # CUDA_VISIBLE_DEVICES (set by SLURM's GRES) can't make us sample a neighbour's GPU.
        try:
            import torch
            uuid = str(torch.cuda.get_device_properties(self.torch_device_index).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
        except Exception:
            visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
            index = self.torch_device_index
            if visible and visible[index].strip().isdigit():
                index = int(visible[index])
            return pynvml.nvmlDeviceGetHandleByIndex(index)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception as e:  # keep what we have; a late NVML error shouldn't kill the job
                self.note = f"sampling stopped early: {type(e).__name__}: {e}"
                return
            self._stop.wait(self.interval_s)

    @property
    def started(self) -> bool:
        return self._thread is not None

    def stop(self) -> Optional[dict]:
        """Stop sampling; {"mean_percent", "max_percent", "samples"}, or None when nothing was sampled."""
        if self._thread is None:
            return None
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
        self._thread = None
        if not self.samples:
            self.note = self.note or "no NVML samples were taken (training ended before the first one)"
            return None
        return {"mean_percent": round(sum(self.samples) / len(self.samples), 2),
                "max_percent": max(self.samples), "samples": len(self.samples)}


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
