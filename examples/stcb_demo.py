"""A short, real demonstration of the STCB layer (the first part of `make demo`).

1. Fuses a 7x7 "RGB" feature map with a "motion" vector and checks the result against the
   definition (the explicit outer product, count-sketched) in float64.
2. Shows the memory the explicit outer product would need at the paper's sizes.
3. Learns a task that needs multiplicative interactions (the label is the sign of x^T W y):
   a linear classifier on STCB(x, y) learns it, one on concat(x, y) cannot.
"""
import time

import torch

from compact_bilinear import STCB, compact_bilinear_pooling
from compact_bilinear.reference import explicit_outer_product_sketch


def check_against_definition():
    torch.manual_seed(0)
    layer = STCB((32, 24), 512)
    x = torch.randn(4, 32, 7, 7, dtype=torch.float64)
    v = torch.randn(4, 24, dtype=torch.float64)
    out = layer(x, v)
    ref = explicit_outer_product_sketch([x, v], layer.hash_indices, layer.hash_signs, 512)
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    print(f"STCB((32, 24), 512) on a 4x32x7x7 map and a 4x24 vector -> {tuple(out.shape)}; "
          f"max relative error vs the explicit outer product: {err:.1e}")
    assert err < 1e-10


def memory_at_paper_sizes():
    b, c, hw, d = 32, 1024, 49, 8192
    outer = b * hw * c * c * 4
    print(f"paper sizes (B={b}, 1024 x 7 x 7 map with a 1024 vector, d={d}): explicit outer product "
          f"{outer / 1e9:.1f} GB in fp32; STCB output {b * hw * d * 4 / 1e6:.1f} MB")
    x, v = torch.randn(b, c, 7, 7), torch.randn(b, c)
    layer = STCB((c, c), d)
    t = time.perf_counter()
    layer(x, v)
    print(f"  STCB forward on this CPU: {1e3 * (time.perf_counter() - t):.0f} ms")


def learn_multiplicative_task(steps=300):
    torch.manual_seed(0)
    n, c = 2048, 16
    w = torch.randn(c, c)
    x, y = torch.randn(n, c), torch.randn(n, c)
    label = ((x @ w * y).sum(1) > 0).long()
    fuse = STCB((c, c), 1024, signed_sqrt=False)
    feats = {"STCB(x, y)": fuse(x, y), "concat(x, y)": torch.cat([x, y], 1)}
    for name, f in feats.items():
        f = (f - f.mean(0)) / (f.std(0) + 1e-6)
        clf = torch.nn.Linear(f.shape[1], 2)
        opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
        tr, te = slice(0, 1536), slice(1536, n)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(clf(f[tr]), label[tr]).backward()
            opt.step()
        acc = (clf(f[te]).argmax(1) == label[te]).float().mean().item()
        print(f"  linear classifier on {name:13s}: held-out accuracy {100 * acc:.1f}%")


if __name__ == "__main__":
    check_against_definition()
    memory_at_paper_sizes()
    print("learning sign(x^T W y), which needs the bilinear interaction:")
    learn_multiplicative_task()
