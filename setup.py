"""Build of compact_bilinear: C++ kernels always, CUDA kernels when they can be built.

CUDA kernels are compiled when torch has CUDA and nvcc is found (CUDA_HOME), or when FORCE_CUDA=1;
COMPACT_BILINEAR_CPU_ONLY=1 skips them (a quicker build while working on the CPU side).
TORCH_CUDA_ARCH_LIST is respected; the default covers A100 (8.0) and H100/H200 (9.0).
"""
import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

here = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("COMPACT_BILINEAR_CPU_ONLY", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = ["csrc/cbp.cpp", "csrc/autograd.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3"]
    include_dirs = [os.path.join(here, "csrc")]
    # Symbols of static archives stay private to this library. On the lent H100 machine the
    # default g++ (/opt/gcc) links libstdc++ statically; its exported copy then mixed with the
    # process's libstdc++.so (our functions bound to our copy, its data to theirs) and the first
    # error message this library formatted crashed in std::ostream. Hidden, the copy is whole.
    link = ["-Wl,--exclude-libs,ALL"]
    # at::parallel_for is an inline template whose OpenMP body only exists in units compiled with
    # OpenMP; without these flags every CPU kernel of this library ran on one thread. At run time
    # the OpenMP runtime torch already loaded (same soname) serves this library too.
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    # Headers count for setuptools' up-to-date check, so a header-only change rebuilds.
    depends = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))
    if not want_cuda():
        return CppExtension(
            "compact_bilinear._C",
            sources,
            include_dirs=include_dirs,
            depends=depends,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    # ATen's CUDA headers include cuSPARSE/cuBLAS/cuFFT headers; pip-installed torch ships them in
    # the nvidia/* wheels rather than under CUDA_HOME.
    nvidia = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    include_dirs += sorted(glob.glob(os.path.join(nvidia, "*", "include")))
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    # --threads=0: nvcc compiles the architectures of TORCH_CUDA_ARCH_LIST in parallel, one per
    # core (the default two: a clean build on 2 cores took 3 min 29 s without it, 2 min 35 s with).
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "--threads=0"]
    if os.environ.get("COMPACT_BILINEAR_OUTLINE_FFT_PASSES", "0") == "1":  # quick builds (common/macros.h)
        nvcc.append("-DCOMPACT_BILINEAR_OUTLINE_FFT_PASSES")
    return CUDAExtension(
        "compact_bilinear._C",
        sources,
        include_dirs=include_dirs,
        depends=depends,
        extra_compile_args={"cxx": cxx + ["-DCOMPACT_BILINEAR_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=link,
    )


setup(
    packages=find_packages(include=["compact_bilinear", "compact_bilinear.*", "pyramid", "pyramid.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
