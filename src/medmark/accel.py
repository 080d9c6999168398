"""Feeding an accelerator: pinned memory, non-blocking copies, bf16 autocast, channels-last, cuDNN.

One :class:`Accel` per training run decides how batches reach the device and how the step runs.
On CUDA the loader pins its batches and copies them without blocking, and cuDNN autotunes its
convolution algorithms (:func:`setup_backends`). ``bf16`` (autocast to bfloat16) and
``channels_last`` (NHWC memory format for the model and its inputs) are config switches, off by
default. Off, each is inert: the step is the plain float32 NCHW step, bit for bit (tested). On,
both also run on a CPU (channels-last is exact there up to kernel order; bf16 is slower on most
CPUs and changes the numbers: it is meant for GPUs with bfloat16 units).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def setup_backends(device: torch.device) -> None:
    """On CUDA let cuDNN time its convolution algorithms once per input shape and keep the
    fastest (``cudnn.benchmark``). With ``cudnn.deterministic`` (set by
    :func:`medmark.runtime.seed_everything`) it only chooses among deterministic algorithms.
    Nothing changes on a CPU."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        log.info("cudnn.benchmark on (deterministic=%s)", torch.backends.cudnn.deterministic)


@dataclass(frozen=True)
class Accel:
    """How one training run uses ``device`` (see the module docstring)."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    @property
    def cuda(self) -> bool:
        """True when batches go to a CUDA device (pinned, non-blocking copies)."""
        return self.device.type == "cuda"

    def loader_kwargs(self) -> dict[str, Any]:
        """Extra :class:`torch.utils.data.DataLoader` arguments: pinned batches on CUDA only."""
        return {"pin_memory": self.cuda}

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device (channels-last weights when switched on)."""
        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def batch(self, x: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """A loader tensor on the device, in ``dtype`` (None keeps it): a non-blocking copy
        from pinned memory on CUDA."""
        return x.to(self.device, dtype, non_blocking=self.cuda)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (4-D) in the model's memory format: channels-last when switched on."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast around forward + loss when ``bf16``, else nothing at all."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
