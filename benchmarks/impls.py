"""The implementations compared side by side.

Each one is a function ``fn(inputs) -> Tensor`` built for a case, its hashes and signs:

- ``naive``: the explicit outer product (rows x C1 x C2 ...) followed by its count sketch with
  the combined hash ``(h1[i1] + h2[i2] + ...) mod d`` and sign ``s1[i1] * s2[i2] ...``. It gives
  the same numbers as every other method (the harness checks this against float64) at the cost
  of ``rows x prod(C_k)`` elements of memory.
- ``reference``: the composite torch.fft path as users write it today
  (``compact_bilinear.reference.compact_bilinear_pooling_reference``).
- ``fft`` / ``fused``: the library's own paths (``algorithm="fft"`` / ``"fused"``).
- ``cupy``: the composite written with CuPy (cuFFT), forward only; only on CUDA with CuPy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .cases import Case
from .hardware import meminfo_bytes

LOW_PRECISION = (torch.bfloat16, torch.float16)


class NotApplicable(Exception):
    """The implementation does not exist for this case (reported as n/a, not as an error)."""


class WontFit(Exception):
    """The implementation would need more memory than the machine has (reported as OOM), or
    more than the run's limit for it (``skipped=True``, reported as skipped)."""

    def __init__(self, msg: str, skipped: bool = False):
        super().__init__(msg)
        self.skipped = skipped


@dataclass
class Impl:
    name: str
    label: str
    backward: bool  # differentiable?
    # build(case, idx, signs, device) -> fn(inputs) -> Tensor; may raise NotApplicable/WontFit
    build: Callable


# ---- naive --------------------------------------------------------------------------------

def naive_bytes(case: Case, mode: str) -> int:
    """Rough peak of the naive method: the outer product and its signed copy (forward); the
    backward adds the gradient of each and the broadcast product's reduction buffer."""
    item = 4 if case.torch_dtype in LOW_PRECISION else case.itemsize
    per = case.outer_elems() * item
    return per * (2 if mode == "fwd" else 4)


def naive_pooling(inputs, idx, signs, d: int, sum_pool: bool = False):
    """Explicit outer product, then its count sketch with the combined hash."""
    dt = inputs[0].dtype
    compute = torch.float32 if dt in LOW_PRECISION else dt
    B = inputs[0].shape[0]
    spatial = None
    rows = []
    for x in inputs:
        x = x.to(compute)
        if x.dim() > 2:
            spatial = tuple(x.shape[2:])
            rows.append(x.flatten(2).transpose(1, 2))  # [B, L, C]
        else:
            rows.append(x[:, None, :])  # [B, 1, C]: broadcasts over locations
    outer = rows[0]
    h = idx[0]
    s = signs[0].to(compute)
    for xr, hk, sk in zip(rows[1:], idx[1:], signs[1:]):
        outer = (outer[..., :, None] * xr[..., None, :]).flatten(-2)  # [B, L, C1*C2*...]
        h = (h[:, None] + hk[None, :]).flatten() % d
        s = (s[:, None] * sk.to(compute)[None, :]).flatten()
    src = outer * s
    out = src.new_zeros(*src.shape[:-1], d).index_add(-1, h, src)  # [B, L, d]
    if sum_pool:
        out = out.sum(1)
    elif spatial is None:
        out = out[:, 0]
    else:
        out = out.transpose(1, 2).reshape(B, d, *spatial)
    return out.to(dt)


def _available_bytes(device) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    available = meminfo_bytes("MemAvailable")
    return available if available is not None else 1 << 62


def build_naive(case: Case, idx, signs, device, mode="fwd+bwd", limit_bytes: Optional[int] = None):
    need = naive_bytes(case, mode)
    avail = _available_bytes(device)
    if need > 0.8 * avail:
        raise WontFit(f"needs ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB free")
    if limit_bytes is not None and need > limit_bytes:
        raise WontFit(f"needs ~{need / 1e9:.1f} GB > --naive-limit-gb "
                      f"{limit_bytes / 1e9:.1f}", skipped=True)

    def fn(xs):
        return naive_pooling(xs, idx, signs, case.d, case.sum_pool)
    return fn


# ---- composite reference --------------------------------------------------------------------

def build_reference(case: Case, idx, signs, device, **_):
    from compact_bilinear.reference import compact_bilinear_pooling_reference as ref

    if case.torch_dtype in LOW_PRECISION:
        # torch.fft has no bfloat16 (and half only for powers of two on CUDA): users upcast.
        signs32 = [s.float() for s in signs]

        def fn(xs):
            out = ref([x.float() for x in xs], idx, signs32, case.d, sum_pool=case.sum_pool)
            return out.to(xs[0].dtype)
        return fn

    def fn(xs):
        return ref(xs, idx, signs, case.d, sum_pool=case.sum_pool)
    return fn


# ---- the library ----------------------------------------------------------------------------

def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def build_library(algorithm: str):
    def build(case: Case, idx, signs, device, **_):
        import compact_bilinear as cb

        if algorithm == "fused" and not (_is_pow2(case.d) and case.d <= 16384):
            raise NotApplicable("fused needs a power-of-two d <= 16384")

        def fn(xs):
            return cb.compact_bilinear_pooling(xs, idx, signs, case.d, sum_pool=case.sum_pool,
                                               algorithm=algorithm)
        return fn
    return build


# ---- CuPy (cuFFT) composite ------------------------------------------------------------------

def cupy_available() -> bool:
    try:
        import cupy  # noqa: F401
        return True
    except Exception:
        return False


_CUPY_ALLOCATOR = None


def _cupy_use_torch_allocator(cp):
    """Route CuPy's device allocations (arrays and cuFFT work areas) through PyTorch's caching
    allocator, so torch.cuda.max_memory_allocated sees them (CuPy's own pool is invisible to
    it) and neither library holds memory the other cannot reuse."""
    global _CUPY_ALLOCATOR
    if _CUPY_ALLOCATOR is not None:
        return

    def malloc(size, device_id):
        return torch.cuda.caching_allocator_alloc(size, device_id,
                                                  torch.cuda.current_stream(device_id))

    def free(ptr, device_id):
        torch.cuda.caching_allocator_delete(ptr)

    try:
        _CUPY_ALLOCATOR = cp.cuda.memory.PythonFunctionAllocator(malloc, free)
        cp.cuda.set_allocator(_CUPY_ALLOCATOR.malloc)
    except Exception:  # older CuPy: its own pool stays, and its memory is not measured
        _CUPY_ALLOCATOR = None


def cupy_memory_visible() -> bool:
    return _CUPY_ALLOCATOR is not None


def build_cupy(case: Case, idx, signs, device, **_):
    if torch.device(device).type != "cuda":
        raise NotApplicable("CuPy runs on CUDA only")
    try:
        import cupy as cp
        import cupyx
    except Exception as e:  # pragma: no cover - depends on the machine
        raise NotApplicable(f"CuPy not importable: {e}")

    _cupy_use_torch_allocator(cp)
    d = case.d
    idx_cp = [cp.from_dlpack(h.contiguous()) for h in idx]
    signs_cp = [cp.from_dlpack(s.float().contiguous()) for s in signs]

    def fn(xs):
        stream = cp.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)
        with stream:
            spec = None
            spatial = None
            B = xs[0].shape[0]
            for x, h, s in zip(xs, idx_cp, signs_cp):
                xc = cp.from_dlpack(x.detach().float().contiguous())
                if xc.ndim > 2:
                    spatial = tuple(xc.shape[2:])
                    xr = xc.reshape(B, xc.shape[1], -1).transpose(0, 2, 1)  # [B, L, C]
                else:
                    xr = xc[:, None, :]
                cs = cp.zeros((xr.shape[0], xr.shape[1], d), dtype=cp.float32)
                cupyx.scatter_add(cs, (slice(None), slice(None), h), xr * s)
                f = cp.fft.rfft(cs, axis=-1)
                spec = f if spec is None else spec * f
            if case.sum_pool:
                spec = spec.sum(axis=1)
                out = cp.fft.irfft(spec, n=d, axis=-1)
            else:
                out = cp.fft.irfft(spec, n=d, axis=-1)  # [B, L, d]
                if spatial is None:
                    out = out[:, 0]
                else:
                    out = cp.ascontiguousarray(out.transpose(0, 2, 1)).reshape(B, d, *spatial)
            out = out.astype(cp.float32, copy=False)
        return torch.from_dlpack(out).to(xs[0].dtype)
    return fn


IMPLS: dict[str, Impl] = {
    "naive": Impl("naive", "naive outer product", True, build_naive),
    "reference": Impl("reference", "composite torch.fft", True, build_reference),
    "fft": Impl("fft", 'library algorithm="fft"', True, build_library("fft")),
    "fused": Impl("fused", 'library algorithm="fused"', True, build_library("fused")),
    "cupy": Impl("cupy", "composite CuPy cuFFT", False, build_cupy),
}

DEFAULT_IMPLS = ("naive", "reference", "fft", "fused", "cupy")


def impls_for(names, device) -> list[Impl]:
    out = []
    for n in names:
        if n == "cupy" and (torch.device(device).type != "cuda" or not cupy_available()):
            continue
        out.append(IMPLS[n])
    return out


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, WontFit)):
        return True
    oom_t = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    if oom_t and isinstance(exc, oom_t):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "defaultcpuallocator" in msg
