"""Energy per image from NVIDIA's NVML cumulative energy counter, or a plain statement of why not.

Method (as the VWT paper measures wattage): run the workload repeatedly for a window of several seconds,
read nvmlDeviceGetTotalEnergyConsumption (millijoules since driver load) before and after; measure the idle
GPU over an equally long window right before; net energy = workload energy - idle power x workload time.
Reports joules per image gross and net. Nothing is estimated: without NVML and an NVIDIA GPU doing the work,
the result says energy is unavailable and why.
"""

from __future__ import annotations

import time
from typing import Callable


def unavailable(reason: str) -> dict:
    return {"available": False, "reason": reason}


def nvml_device(index: int = 0):
    """An NVML handle, or a reason string."""
    try:
        import pynvml
    except ImportError:
        return "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return handle
    except Exception as e:  # no driver, no GPU, or a GPU without the energy counter (pre-Volta)
        return f"NVML cannot read a GPU energy counter ({type(e).__name__}: {e})"


def measure_gpu(work: Callable[[], None], images_per_call: int, window_s: float = 5.0, index: int = 0,
                synchronize: Callable[[], None] | None = None) -> dict:
    """Joules per image of `work` on GPU `index` (gross, and net of the idle draw)."""
    handle = nvml_device(index)
    if isinstance(handle, str):
        return unavailable(handle)
    import pynvml

    def counter_j() -> float:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3

    sync = synchronize or (lambda: None)
    work()
    sync()  # warm
    e0, t0 = counter_j(), time.perf_counter()
    time.sleep(window_s)
    idle_w = (counter_j() - e0) / (time.perf_counter() - t0)
    calls = 0
    e0, t0 = counter_j(), time.perf_counter()
    while time.perf_counter() - t0 < window_s:
        work()
        calls += 1
    sync()
    elapsed, energy = time.perf_counter() - t0, counter_j() - e0
    images = calls * images_per_call
    return {"available": True, "window_s": elapsed, "images": images, "idle_w": idle_w, "mean_w": energy / elapsed,
            "j_per_image_gross": energy / images, "j_per_image_net": (energy - idle_w * elapsed) / images}


def measure_cpu_variant() -> dict:
    """ONNX Runtime's CPU provider: NVML only measures GPUs, and no CPU energy counter is used."""
    return unavailable("runs on the CPU: NVML measures NVIDIA GPUs only, and vwt-export reads no CPU energy "
                       "counter (RAPL is rarely readable in VMs and containers); measure on a GPU backend")
