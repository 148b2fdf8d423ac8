"""Benchmark cases: shapes, the grids and presets built from them, and input generation.

A case fixes everything an implementation sees: the batch, the spatial extent of the maps,
which inputs are maps and which are vectors (vectors broadcast over every location), the
channels of each input (K = number of inputs), the sketch size d, pooling and the dtype.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch

DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class Case:
    """One benchmark shape.

    ``rows`` is the number of locations at which the outer product is formed
    (``batch x prod(spatial)`` when any input is a map, else ``batch``).
    """

    batch: int
    channels: tuple[int, ...]
    d: int
    spatial: tuple[int, ...] = ()
    is_map: tuple[bool, ...] = ()
    sum_pool: bool = False
    dtype: str = "float32"
    #: plot series this case belongs to ("d": time/memory vs d, "rows": vs rows)
    series: tuple[str, ...] = field(default=(), compare=False)
    #: short tag for presets (targets refer to cases by tag)
    tag: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.is_map:
            object.__setattr__(self, "is_map", tuple(bool(self.spatial) for _ in self.channels))
        if len(self.is_map) != len(self.channels):
            raise ValueError("is_map and channels must have one entry per input")
        if any(self.is_map) and not self.spatial:
            raise ValueError("map inputs need a spatial extent")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def K(self) -> int:
        return len(self.channels)

    @property
    def any_map(self) -> bool:
        return any(self.is_map)

    @property
    def locations(self) -> int:
        return math.prod(self.spatial) if self.any_map else 1

    @property
    def rows(self) -> int:
        return self.batch * self.locations

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.torch_dtype).element_size()

    def input_shapes(self) -> list[tuple[int, ...]]:
        return [
            (self.batch, c, *self.spatial) if m else (self.batch, c)
            for c, m in zip(self.channels, self.is_map)
        ]

    def output_shape(self) -> tuple[int, ...]:
        if self.sum_pool or not self.any_map:
            return (self.batch, self.d)
        return (self.batch, self.d, *self.spatial)

    def input_bytes(self) -> int:
        return sum(math.prod(s) for s in self.input_shapes()) * self.itemsize

    def output_bytes(self) -> int:
        return math.prod(self.output_shape()) * self.itemsize

    def outer_elems(self) -> int:
        """Elements of the explicit outer product the naive method forms."""
        return self.rows * math.prod(self.channels)

    def fft_counts(self) -> tuple[int, int]:
        """(forward real FFTs, inverse real FFTs) of length d one forward pass needs at least.

        A vector's spectrum is computed once per sample; a pooled output needs one inverse
        FFT per sample (DESIGN.md section 2).
        """
        fwd = sum(self.rows if m else self.batch for m in self.is_map)
        inv = self.batch if (self.sum_pool or not self.any_map) else self.rows
        return fwd, inv

    # ---- labels --------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        if not self.any_map:
            return "vectors"
        sp = "x".join(map(str, self.spatial))
        parts = ["map" if m else "vec" for m in self.is_map]
        return f"{sp} " + "*".join(parts)

    @property
    def label(self) -> str:
        ch = "x".join(map(str, self.channels)) if len(set(self.channels)) > 1 else (
            f"{self.channels[0]}x{self.K}")
        s = f"{self.kind} B={self.batch} R={self.rows} C={ch} d={self.d}"
        if self.sum_pool:
            s += " pooled"
        if self.dtype != "float32":
            s += f" {self.dtype}"
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(rows=self.rows, K=self.K, label=self.label,
                 input_shapes=self.input_shapes(), output_shape=self.output_shape(),
                 input_bytes=self.input_bytes(), output_bytes=self.output_bytes())
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        keys = ("batch", "channels", "d", "spatial", "is_map", "sum_pool", "dtype", "series", "tag")
        kw = {k: d[k] for k in keys if k in d}
        for k in ("channels", "spatial", "is_map", "series"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


# ---- inputs -----------------------------------------------------------------------------

def make_hashes(case: Case, device, seed: int = 0):
    from compact_bilinear.reference import random_hashes

    g = torch.Generator().manual_seed(seed)
    idx, signs = random_hashes(list(case.channels), case.d, generator=g, device=device)
    return list(idx), list(signs)


def make_inputs(case: Case, device, seed: int = 1, requires_grad: bool = False,
                dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """One input set: standard normal values (never zeros), generated on the CPU for
    reproducibility across devices, then moved."""
    g = torch.Generator().manual_seed(seed)
    dt = dtype or case.torch_dtype
    xs = []
    for shape in case.input_shapes():
        x = torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dt)
        xs.append(x.requires_grad_(requires_grad))
    return xs


def make_grad_output(case: Case, device, seed: int = 2, dtype: torch.dtype | None = None):
    g = torch.Generator().manual_seed(seed)
    dt = dtype or case.torch_dtype
    return torch.randn(case.output_shape(), generator=g).to(device=device, dtype=dt)


def rotation_sets(case: Case, cache_bytes: int, max_sets: int = 16) -> int:
    """Enough input sets that together they exceed twice the last-level cache, so no timed
    call finds its inputs already cached by the previous one."""
    n = math.ceil(2 * cache_bytes / max(case.input_bytes(), 1)) + 1
    return max(2, min(max_sets, n))


# ---- grids and presets --------------------------------------------------------------------

def _vec(B, C, d, K=2, **kw):
    return Case(batch=B, channels=(C,) * K if isinstance(C, int) else tuple(C), d=d, **kw)


def _maps(B, S, C, d, is_map=None, K=2, **kw):
    chans = (C,) * K if isinstance(C, int) else tuple(C)
    return Case(batch=B, channels=chans, d=d, spatial=tuple(S),
                is_map=tuple(is_map) if is_map else tuple(True for _ in chans), **kw)


def canonical(batch: int = 32, channels: int = 1024, d: int = 8192, **kw) -> Case:
    """DESIGN.md section 4's canonical case: B = 32, 7x7 maps, two inputs of 1024 channels,
    d = 8192 (keywords as for Case: sum_pool, dtype, tag, ...)."""
    return _maps(batch, (7, 7), channels, d, **kw)


def grid_default() -> list[Case]:
    """`make bench`: a few minutes on 2 CPU cores. Sweeps d and rows, maps vs vectors,
    pooled vs not, K = 2 and 3."""
    cases = []
    for d in (1024, 2048, 4096, 8192, 16384):
        cases.append(_vec(64, 512, d, series=("d",)))
    for R in (16, 256, 1024):
        cases.append(_vec(R, 512, 4096, series=("rows",)))
    # the d=4096 point of the d sweep is also the R=64 point of the rows sweep
    cases[2] = replace(cases[2], series=("d", "rows"))
    # C=256 for the maps and C=96 for K=3 keep the naive outer product (25.7M / 56.6M
    # elements) to seconds; the cpu-targets preset has the full-size maps.
    cases += [
        _maps(8, (7, 7), 256, 4096),
        _maps(8, (7, 7), 256, 4096, sum_pool=True),
        _maps(8, (7, 7), 256, 4096, is_map=(True, False)),
        _vec(64, 96, 4096, K=3),
    ]
    return cases


def grid_quick() -> list[Case]:
    """`make demo`: under a minute."""
    return [
        _vec(32, 256, 1024, series=("d",)),
        _vec(32, 256, 4096, series=("d", "rows")),
        _vec(128, 256, 4096, series=("rows",)),
        _maps(4, (7, 7), 256, 4096, sum_pool=True),
        _maps(4, (7, 7), 256, 2048, is_map=(True, False)),
    ]


def grid_cuda() -> list[Case]:
    """Default grid on a GPU: the CPU grid plus the canonical case (DESIGN.md section 4), pooled
    and not, and its map x vector variant (one map: two rows share each forward transform), also at
    d = 16384, where the fused backward keeps its half spectra in global memory."""
    return grid_default() + [
        canonical(tag="canonical"),
        canonical(sum_pool=True, tag="canonical-pooled"),
        canonical(is_map=(True, False), tag="canonical-map-x-vector"),
        canonical(is_map=(True, False), d=16384, tag="map-x-vector-16384"),
    ]


def preset_cpu_targets() -> tuple[list[Case], list[Case]]:
    """Issue 2's targets: (timed cases, memory case)."""
    timed = [
        _vec(392, 1024, 4096, tag="a"),
        _maps(8, (7, 7), 1024, 4096, is_map=(True, False), tag="b"),
        _maps(8, (14, 14), 512, 8192, sum_pool=True, tag="c"),
    ]
    mem = [canonical(tag="mem")]
    return timed, mem


def preset_gpu_canonical() -> list[Case]:
    cases = []
    for dtype in ("float32", "bfloat16"):
        for pooled in (False, True):
            tag = ("pooled" if pooled else "unpooled") + "-" + dtype
            cases.append(canonical(sum_pool=pooled, dtype=dtype, tag=tag))
    return cases


def filter_cases(cases: Sequence[Case], dtype: str | None = None) -> list[Case]:
    if dtype is None:
        return list(cases)
    return [replace(c, dtype=dtype) for c in cases]
