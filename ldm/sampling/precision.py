"""Mixed precision of a run: its own small record, apart from the sampling options (issue 37).

`Precision("bf16")` is the autocast the sampler, the encoder and the decoder run under; "fp32" runs as is. Tasks take
it as `precision=` ("fp32", "bf16", "fp16" or a Precision), and their settings record its name (`precision`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from ldm.core.errors import LdmError

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_PRECISION = "fp32"


class PrecisionError(LdmError, ValueError):
    pass


@dataclass(frozen=True)
class Precision:
    """The autocast precision of a run, by name (a key of PRECISIONS), checked when made."""

    name: str = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in PRECISIONS:
            raise PrecisionError(f"unknown precision {self.name!r}; known: {', '.join(PRECISIONS)}")

    @classmethod
    def of(cls, precision: str | Precision | None) -> Precision:
        """A Precision from its name (None: the default, fp32), or the one given."""
        if isinstance(precision, Precision):
            return precision
        return cls(DEFAULT_PRECISION if precision is None else precision)

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype; None for fp32, which runs without autocast."""
        return PRECISIONS[self.name]

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """Mixed precision where the device supports it; fp32 runs as is."""
        if self.dtype is None:
            return nullcontext()
        if self.dtype is torch.float16 and device.type != "cuda":
            raise PrecisionError("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.autocast(device.type, dtype=self.dtype)


def autocast(device: torch.device, precision: str | Precision) -> AbstractContextManager:
    """Mixed precision where the device supports it (`Precision.autocast`); fp32 runs as is."""
    return Precision.of(precision).autocast(device)
