"""One attention function for the whole package.

torch's scaled_dot_product_attention is the default; xformers is used only when it is
installed, the tensors are on CUDA and the caller did not opt out.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # optional extra: pip install ldm[xformers]
    import xformers.ops as _xops
except Exception:  # pragma: no cover - depends on the machine
    _xops = None

# LDM_ATTENTION=sdpa forces torch's kernel even where xformers is importable.
_BACKEND = os.environ.get("LDM_ATTENTION", "auto")


def xformers_available() -> bool:
    return _xops is not None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention over [batch, tokens, heads * dim_head] tensors.

    Returns [batch, q_tokens, heads * dim_head]. The softmax runs in the input dtype on the
    fused kernels, which keep fp32 accumulators, so half precision does not overflow the
    way a naive q @ k^T would.
    """
    b, n, inner = q.shape
    d = inner // heads
    if _xops is not None and q.is_cuda and _BACKEND != "sdpa":
        q, k, v = (t.reshape(b, t.shape[1], heads, d) for t in (q, k, v))
        out = _xops.memory_efficient_attention(q.contiguous(), k.contiguous(), v.contiguous())
        return out.reshape(b, n, inner)
    # SDPA's fused CPU kernel needs the feature axis contiguous; given the VAE's pixels-as-tokens (a transposed
    # conv output) it falls back to the math path, which holds the whole tokens x tokens matrix: 32 GiB at 2048 px.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    q, k, v = (t.reshape(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, n, inner)
