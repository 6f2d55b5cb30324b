"""Probe: would oneDNN make the CPU backward of LocallyConnected2d faster? (a measured negative result)

    python benchmarks/onednn_backward_probe.py [--threads 2] [--rounds 9] [--json OUT] [--gemms-only]

First the GEMM throughput behind it: one position's GEMM (N x K x O, K = 576) and a per-tap GEMM of the
portable backward through torch.mm (MKL) and oneDNN's fp32 matmul (``mkldnn._linear_pointwise``), 36 of
them as one ``torch.bmm``, and ``F.conv2d`` doing the same arithmetic as the 36 (the shared-weight layer).

The forward's GEMMs run as oneDNN grouped 1x1 convolutions (nn/local_onednn.py), which beat MKL's bmm on
AMD CPUs. This script times the same idea for the backward, in its fastest formulation found (all others
tried were slower still): per position p, with K = (c, kh, kw) and the columns gathered as ``[K, P, N]``
from a ``[C, H, W, N]`` copy of the padded input (runs of ``W_out * N`` values, the cheapest gather),

    grad_weight^T [K, P*O] = conv(columns [K, P, N], grad_out as [P*O, N])     one grouped 1x1 convolution
    grad_columns  [K, P*N] = conv(weight^T [K, P, O], grad_out as [P*N, O])    another, then a col2im

with every work tensor allocated once and reused (fresh multi-MiB buffers cost page faults). Baseline, in
the same run: ``local_portable.backward``, the fused per-tap backward the layers run (contiguous weight,
its taps-last copy, contiguous gradient). Both are checked against each other first. Prints the times and
the ratio probe/portable per cc-11pct shape (local3/local4 at 6x6, N = 128 and 512; fp32, 2 threads).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from localconv.nn import local_onednn, local_portable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_layer import time_steps  # noqa: E402  (benchmarks/local_layer.py: round-robin medians)

SHAPES = [(f"{layer}-6x6-N{n}", n, o) for n in (128, 512) for layer, o in (("local3", 64), ("local4", 32))]
CHANNELS, SIDE, KERNEL = 64, 6, 3  # 3x3, padding 1, stride 1: output side = input side


class OneDnnBackward:
    """The probe's backward for one shape (3x3, pad 1, stride 1, one group), with its buffers."""

    def __init__(self, n: int, o: int) -> None:
        c, s, k = CHANNELS, SIDE, KERNEL
        self.n, self.o, self.p, self.k = n, o, s * s, c * k * k
        self.padded = torch.zeros(c, s + 2, s + 2, n)  # borders stay zero
        self.columns = torch.empty(c, k, k, s, s, n)
        self.grad_by_o = torch.empty(s, s, o, n)
        self.grad_by_n = torch.empty(s, s, n, o)
        self.weight_t = torch.empty(self.k, self.p * o)
        self.grad_weight_t = torch.empty(self.k, self.p * o)
        self.grad_columns = torch.empty(self.k, self.p * n)
        self.grid = torch.empty(c, s + 2, s + 2, n)

    def __call__(self, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n, o, p, k, s = self.n, self.o, self.p, self.k, SIDE
        c = CHANNELS
        # grad_weight: columns [K, P, N] from the [C, H, W, N] padded input
        self.padded[:, 1:-1, 1:-1].copy_(x.reshape(n, c * s * s).t().view(c, s, s, n))
        st = self.padded.stride()
        self.columns.copy_(self.padded.as_strided(self.columns.shape, (st[0], st[1], st[2], st[1], st[2], 1)))
        self.grad_by_o.copy_(grad_out.permute(2, 3, 1, 0))
        local_onednn._grouped_1x1(self.columns.view(k, p * n), self.grad_by_o.view(p * o, n), k, p,
                                  self.grad_weight_t.zero_())
        grad_weight = self.grad_weight_t.t().contiguous().view(s, s, o, c, KERNEL, KERNEL)
        # grad_input: columns' gradient [K, P, N], added back tap by tap into the [C, H, W, N] grid
        self.weight_t.copy_(weight.reshape(p * o, k).t())
        self.grad_by_n.copy_(grad_out.permute(2, 3, 0, 1))
        local_onednn._grouped_1x1(self.weight_t, self.grad_by_n.view(p * n, o), k, p, self.grad_columns.zero_())
        taps = self.grad_columns.view(c, KERNEL, KERNEL, s, s, n)
        self.grid.zero_()
        for kh in range(KERNEL):
            for kw in range(KERNEL):
                self.grid[:, kh:kh + s, kw:kw + s] += taps[:, kh, kw]
        grad_x = self.grid[:, 1:-1, 1:-1].reshape(c * s * s, n).t().contiguous().view(n, c, s, s)
        return grad_x, grad_weight


def portable_backward(n: int, o: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple]:
    """What the layers run: the forward's taps-last copy of the contiguous weight, then the fused backward."""
    geo = local_portable.geometry((n, CHANNELS, SIDE, SIDE), (SIDE, SIDE, o, CHANNELS, KERNEL, KERNEL),
                                  (1, 1), (1, 1, 1, 1), (1, 1), 1)
    buffer = torch.empty(SIDE * SIDE * o * CHANNELS * KERNEL * KERNEL)

    def run(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> tuple:
        taps_last = local_portable.taps_last_weight(weight, 2, out=buffer)
        return local_portable.backward(grad_out, x, taps_last, geo, True, True, torch.contiguous_format,
                                       grad_weight_taps_last=False)
    return run


def gemm_rates(rounds: int) -> list[dict]:
    """GFLOP/s of the GEMMs above, each against torch.mm on the same operands in the same run."""
    linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    records = []
    for n, k, o in ((128, 576, 64), (128, 576, 32), (64, 128, 192), (128, 192, 64)):
        a, b = torch.randn(n, k), torch.randn(o, k)
        stacked_a, stacked_b = torch.randn(36, n, k), torch.randn(36, k, o)
        calls = {"mm": lambda: torch.mm(a, b.t()), "bmm x36": lambda: torch.bmm(stacked_a, stacked_b)}
        if linear is not None:
            calls["onednn-linear"] = lambda: linear.default(a, b, None, "none", [], "")
        if k == 576:  # the layer's arithmetic with shared weights: 36 positions of a 6x6 map, 3x3 kernel
            image, kernel = torch.randn(n, k // 9, 6, 6), torch.randn(o, k // 9, 3, 3)
            calls["conv2d x36"] = lambda: torch.nn.functional.conv2d(image, kernel, None, 1, 1)
        ms = {name: seconds * 1e3 for name, seconds in time_steps(calls, "cpu", rounds).items()}
        flops = {name: 2 * n * k * o * (36 if "x36" in name else 1) for name in calls}
        rates = {name: flops[name] / (ms[name] * 1e6) for name in calls}
        records.append({"gemm": f"{n}x{k}x{o}", **{f"{name} GFLOP/s": round(r, 1) for name, r in rates.items()}})
        print(f"  GEMM {n}x{k}x{o}: " + ", ".join(f"{name} {r:.0f} GFLOP/s ({r / rates['mm']:.2f}x mm)"
                                                  for name, r in rates.items()))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="write the records here")
    parser.add_argument("--gemms-only", action="store_true", help="only the GEMM throughput lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"threads={args.threads} torch={torch.__version__}")
    gemms = gemm_rates(args.rounds)
    records: list[dict] = []
    shapes = [] if args.gemms_only else SHAPES
    if shapes:
        print("backward only (grad_input + grad_weight), fp32")
    for name, n, o in shapes:
        x = torch.randn(n, CHANNELS, SIDE, SIDE, generator=gen)
        weight = torch.randn(SIDE, SIDE, o, CHANNELS, KERNEL, KERNEL, generator=gen) * 0.05
        grad_out = torch.randn(n, o, SIDE, SIDE, generator=gen)
        probe, portable = OneDnnBackward(n, o), portable_backward(n, o)
        for got, want in zip(probe(grad_out, x, weight), portable(grad_out, x, weight)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # same maths, other summation order
        seconds = time_steps({"portable": lambda: portable(grad_out, x, weight),
                              "onednn-probe": lambda: probe(grad_out, x, weight)}, "cpu", args.rounds)
        ms = {name: value * 1e3 for name, value in seconds.items()}
        ratio = ms["onednn-probe"] / ms["portable"]
        records.append({"shape": name, **{f"{k}_ms": round(v, 3) for k, v in ms.items()}, "probe_over_portable":
                        round(ratio, 3)})
        print(f"  {name:18s} portable {ms['portable']:7.2f} ms   oneDNN probe {ms['onednn-probe']:7.2f} ms   "
              f"probe/portable {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "torch": torch.__version__, "gemms": gemms, "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
