"""The GPU a benchmark ran on, and the peak its model FLOP utilization is measured against."""

import re
import subprocess

import torch

# Dense bf16 tensor-core peaks in TFLOP/s, by the name torch.cuda.get_device_name gives. NVIDIA's
# datasheets print them with 2:4 sparsity; dense is half: H100 SXM5 1,979 (torch names it
# "NVIDIA H100 80GB HBM3"), H100 PCIe 1,513, H100 NVL 1,671 (H100 datasheet); H200 SXM 1,979,
# H200 NVL 1,671 (H200 datasheet); GH200 1,979 (GH200 datasheet); A100 SXM4 and PCIe 624 (A100
# datasheet). First match wins, so the specific names come before the general ones.
DENSE_BF16_TFLOPS = (
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("H200 NVL", 835.5),
    ("H200", 989.4),
    ("A100", 312.0),
)


def dense_bf16_peak(device: str) -> tuple[float | None, str]:
    """The device's dense bf16 peak in TFLOP/s and where it comes from; None and the reason
    where there is no such number to compare with."""
    if device == "cpu":
        return None, "no tensor-core peak on a CPU"
    for pattern, tflops in DENSE_BF16_TFLOPS:
        if re.search(pattern, device, re.IGNORECASE):
            return tflops, f"{device}: dense bf16 peak {tflops} TFLOP/s (bench/device.py)"
    return None, f"{device} is not in bench/device.py's table of dense bf16 peaks: add it"


def describe_gpu(index: int) -> dict:
    """Name, driver, CUDA runtime, cuDNN and size of CUDA device `index`."""
    properties = torch.cuda.get_device_properties(index)
    return {
        "name": properties.name,
        "driver": _driver_version(index),
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "capability": f"{properties.major}.{properties.minor}",
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "multiprocessors": properties.multi_processor_count,
    }


def _driver_version(index: int) -> str | None:
    try:
        query = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return query.stdout.strip() or None
