"""How a CPU thread waits for the GPU: spin, yield, or sleep until an interrupt (CUDA's scheduling flags).

Every GPU worker thread waits for the device many times a second: the ASR at each greedy token, the LLM at each
decode step, the TTS at each audio window. CUDA's default (`auto`) spins when the machine has more cores than
active contexts, i.e. always here: a waiting thread busy-polls the driver. With three worker threads polling, the
thread that wants to *launch* (the ASR's encoder: ~200 kernels queued from Python) shares the driver and the cores
with them. `yield` makes a waiting thread yield its core between polls. (CUDA's blocking-sync mode, which sleeps on
an interrupt, stalled the pipeline when tried and is not offered; see MODES.)

The flags belong to the device's primary context, so one call per process is enough, and the driver API sets them
on a context that is already active (cuDevicePrimaryCtxSetFlags_v2).
"""

from __future__ import annotations

import ctypes

# CU_CTX_SCHED_*: the low three bits of a context's flags. CU_CTX_SCHED_BLOCKING_SYNC (4) is not offered: on the
# H100 (3671256, the N = 32 sessions probe) it stalled the pipeline: 32 of 36 turns got no reply within 10 s and
# the GPU workers were busy 5 % of the time (4-30 % with "auto"). Not yet understood; see docs/perf-notes.md.
MODES = {"auto": 0, "spin": 1, "yield": 2}
_SCHED_MASK = 0x07


def set_cuda_sync(mode: str, device: int | None = None) -> str:
    """Set how threads wait for `device` (default: torch's current CUDA device). Returns the mode now in force,
    read back from the driver. "auto" leaves the flags as they are. Raises ValueError on an unknown mode and
    RuntimeError when the driver refuses."""
    if mode not in MODES:
        raise ValueError(f"cuda_sync must be one of {sorted(MODES)}, not {mode!r}")
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    torch.cuda.init()
    index = torch.cuda.current_device() if device is None else device
    cu = ctypes.CDLL("libcuda.so.1")
    dev = ctypes.c_int()
    _check(cu.cuDeviceGet(ctypes.byref(dev), ctypes.c_int(index)), "cuDeviceGet")
    flags, active = ctypes.c_uint(), ctypes.c_int()
    _check(cu.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)), "cuDevicePrimaryCtxGetState")
    if mode != "auto":
        new = (flags.value & ~_SCHED_MASK) | MODES[mode]
        _check(cu.cuDevicePrimaryCtxSetFlags_v2(dev, ctypes.c_uint(new)), "cuDevicePrimaryCtxSetFlags_v2")
        _check(cu.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)),
               "cuDevicePrimaryCtxGetState")
    names = {v: k for k, v in MODES.items()}
    return names.get(flags.value & _SCHED_MASK, f"flags {flags.value:#x}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed with CUDA driver error {rc}")
