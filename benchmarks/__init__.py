"""Benchmarks for compact bilinear pooling: ``python -m benchmarks --help``.

Compares, side by side and in one run, the explicit outer product followed by its count
sketch ("naive"), the composite torch.fft path users write today ("reference"), the library's
``algorithm="fft"`` and ``algorithm="fused"``, and (on CUDA with CuPy) a CuPy cuFFT composite.
See docs/benchmarks.md.
"""
