"""Data-parallel training on PyTorch's own engine (DistributedDataParallel, launched by torchrun).

``torchrun --nproc_per_node=G -m localconv train ...`` starts G processes with RANK /
WORLD_SIZE / LOCAL_RANK in the environment. Each rank keeps its own shard of the
training images (every G-th image) on its device and draws its own epoch plan from
``(seed, epoch, rank)``; ``--batch-size`` is the *global* batch, split evenly over
the ranks, and the learning rates are those of that global batch (DDP averages the
gradients, so one step sees the same number of images as a single-process step).
Rank 0 alone writes checkpoints, logs and the progress bar; evaluation is split over
the ranks and the correct counts are summed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import LocalconvError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment(device: str) -> DistContext | None:
    """Join the process group torchrun set up; None when not launched by torchrun (or world size 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local_rank)


def device_for(ctx: DistContext | None, device: torch.device) -> torch.device:
    if ctx is not None and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


def shard(tensor: torch.Tensor | None, ctx: DistContext | None) -> torch.Tensor | None:
    """This rank's shard: every world_size-th row starting at its rank, trimmed to equal lengths."""
    if tensor is None or ctx is None:
        return tensor
    per_rank = tensor.shape[0] // ctx.world_size
    return tensor[ctx.rank::ctx.world_size][:per_rank]


def local_batch_size(global_batch: int, ctx: DistContext | None) -> int:
    if ctx is None:
        return global_batch
    if global_batch % ctx.world_size:
        raise LocalconvError(f"--batch-size {global_batch} (the global batch) must be a multiple of the "
                             f"{ctx.world_size} processes")
    return global_batch // ctx.world_size


def all_sum(values: list[float], ctx: DistContext | None, device: torch.device) -> list[float]:
    if ctx is None:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_true(flag: bool, ctx: DistContext | None, device: torch.device) -> bool:
    """True on every rank when it is true on some rank (stop requests, non-finite losses)."""
    if ctx is None:
        return flag
    return all_sum([1.0 if flag else 0.0], ctx, device)[0] > 0


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def shutdown(ctx: DistContext | None) -> None:
    if ctx is not None and dist.is_initialized():
        dist.destroy_process_group()
