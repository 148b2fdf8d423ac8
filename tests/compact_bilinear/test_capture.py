"""What CUDA-graph capture (and torch.compile's mode="reduce-overhead", which captures graphs) needs
of a call: after a first call, no host synchronisation and no copy to or from the host. The hash
tables are validated once per tensor and cached (that check reads its result back), the twiddles
and the device's limits are cached, and the fused kernel's per-call workspace (the pooled sums'
arrival counts) is zeroed on the stream.

On every device the profiler sees each ATen call the library makes, C++ included: a warm call may
make no `.item()` (`_local_scalar_dense`), no `nonzero` and no copy of a tensor with dims (a
0-dim `_to_copy` is a Python number that torch's own ops wrap, passed to kernels by value). On
CUDA, STCB's forward and backward are also captured in a graph and replayed on new inputs, with
the eager results bit for bit. That runs in a subprocess, so that a failed capture cannot leave the
process's CUDA state to the tests after it.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compact_bilinear as cb

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import torch
import compact_bilinear as cb

torch.manual_seed(0)
dev = "cuda"
for algorithm in ("fused", "fft"):
    for sum_pool in (False, True):
        layer = cb.STCB((64, 48), 1024, sum_pool=sum_pool, signed_sqrt=True, l2_normalize=True,
                        algorithm=algorithm).to(dev)
        x = torch.randn(4, 64, 7, 7, device=dev, requires_grad=True)
        v = torch.randn(4, 48, device=dev, requires_grad=True)
        w = torch.randn(layer(x, v).shape, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: validation, caches, plans
            for _ in range(2):
                (layer(x, v) * w).sum().backward()
        torch.cuda.current_stream().wait_stream(side)
        x.grad = v.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = layer(x, v)
            (out * w).sum().backward()
        for _ in range(2):
            with torch.no_grad():
                x.copy_(torch.randn_like(x))
                v.copy_(torch.randn_like(v))
            graph.replay()
            xe, ve = x.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
            eager = layer(xe, ve)
            (eager * w).sum().backward()
            torch.cuda.synchronize()
            case = (algorithm, sum_pool)
            assert torch.equal(out, eager), case
            assert torch.equal(x.grad, xe.grad) and torch.equal(v.grad, ve.grad), case
print("OK")
"""


@pytest.mark.parametrize("algorithm", ["fused", "fft"])
@pytest.mark.parametrize("sum_pool", [False, True])
def test_a_warm_call_reads_nothing_back(algorithm, sum_pool, device):
    layer = cb.STCB((64, 48), 1024, sum_pool=sum_pool, signed_sqrt=True, l2_normalize=True, algorithm=algorithm)
    layer = layer.to(device)
    x = torch.randn(4, 64, 7, 7, device=device, requires_grad=True)
    v = torch.randn(4, 48, device=device, requires_grad=True)

    def host_traffic():
        with torch.profiler.profile(record_shapes=True) as prof:
            layer(x, v).square().sum().backward()
        return [(e.name, e.input_shapes[0] if e.input_shapes else None) for e in prof.events()
                if e.name in ("aten::_local_scalar_dense", "aten::nonzero")
                or (e.name == "aten::_to_copy" and e.input_shapes and e.input_shapes[0])]

    cold = host_traffic()
    assert any(name == "aten::_local_scalar_dense" for name, _ in cold)  # the hash check, seen by the profiler
    assert host_traffic() == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_capture_replays_forward_and_backward():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
