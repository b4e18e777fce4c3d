"""Where PyTorch work runs (training, PyTorch eval): a torch device name checked against what torch sees.

OpenVINO stages (export, bench, IR eval) name OpenVINO devices instead (CPU, GPU); this is only for torch.
"""

from __future__ import annotations

from sqft_ov.errors import ConfigError

TORCH_DEVICES = ("auto", "cpu", "cuda", "xpu")


def available_torch_devices() -> dict[str, bool]:
    import torch

    xpu = getattr(torch, "xpu", None)
    return {"cuda": torch.cuda.is_available(), "xpu": bool(xpu is not None and xpu.is_available()), "cpu": True}


def torch_device(name: str) -> str:
    """`auto`: CUDA, else an Intel XPU, else the CPU (the order Accelerate picks in); a named device must exist."""
    name = name.lower()
    if name not in TORCH_DEVICES:
        raise ConfigError(f"unknown --device {name!r} for PyTorch: choose one of {', '.join(TORCH_DEVICES)}")
    available = available_torch_devices()
    if name == "auto":
        return next(device for device, ok in available.items() if ok)
    if not available[name]:
        import torch

        seen = ", ".join(d for d, ok in available.items() if ok)
        raise ConfigError(f"--device {name}: this torch ({torch.__version__}) sees no {name.upper()} device (it sees "
                          f"{seen}); use --device auto or cpu, or install a torch build for that device")
    return name
