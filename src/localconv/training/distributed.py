"""Data-parallel training on PyTorch's own engine (DistributedDataParallel, launched by torchrun).

``torchrun --nproc_per_node=G -m localconv train ...`` starts G processes with RANK /
WORLD_SIZE / LOCAL_RANK in the environment. Each rank keeps its own shard of the
training images (every G-th image) on its device and draws its own epoch plan from
``(seed, epoch, rank)``; ``--batch-size`` is the *global* batch, split evenly over
the ranks, and the learning rates are those of that global batch (DDP averages the
gradients, so one step sees the same number of images as a single-process step).
Rank 0 alone writes checkpoints, logs and the progress bar; evaluation is split over
the ranks and the correct counts are summed. ``localconv train --nproc-per-node G`` starts the same G
processes itself (cli/launch.py) and ends with localconv's exit codes instead of torchrun's.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import LocalconvError


TIMEOUT_ENV = "LOCALCONV_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0  # a collective waits this long for a stopped or hung process (PyTorch's own: 30 min)


class CollectiveFailure(LocalconvError):
    """Another process of the torchrun job died, or did not answer within the collective timeout."""

    every_rank = True  # printed by each process that saw it (the failed one may be rank 0)
    exit_code = 1  # not an input error: exit 2 is kept for those (the launcher tells them apart by it)


def collective_timeout() -> float:
    """Seconds a collective waits for every process: ``$LOCALCONV_DDP_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get(TIMEOUT_ENV, "")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not (0 < seconds < 1e7):
        raise LocalconvError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0")
    return seconds


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
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=collective_timeout()))
    return DistContext(rank, world, local_rank)


def as_collective_failure(exc: BaseException, ctx: DistContext | None) -> CollectiveFailure | None:
    """The one-line error for ``exc`` if it is a failed collective (a peer killed, stopped or hung), else None."""
    if ctx is None or not isinstance(exc, RuntimeError) or isinstance(exc, LocalconvError):
        return None
    text = str(exc)
    dist_error = isinstance(exc, getattr(dist, "DistError", ()))
    timed_out = "timed out" in text.lower() or "timeout" in text.lower()
    closed = any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))
    if not (dist_error or timed_out or closed or "gloo" in text.lower() or "nccl" in text.lower()):
        return None
    what = (f"did not answer within {collective_timeout():g} s (stopped or hung; set {TIMEOUT_ENV} to wait longer)"
            if timed_out and not closed else "ended or lost its connection")
    # gloo's first sentence, without its source location: "[.../pair.cc:537] Read error ...: Connection reset ..."
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
    first = first.split(". ")[0][:160]
    job = "job" if os.environ.get("LOCALCONV_LAUNCHER") else "torchrun job"  # train --nproc-per-node's, or torchrun's
    return CollectiveFailure(f"rank {ctx.rank} of {ctx.world_size}: another process of the {job} {what}; "
                             f"training stopped ({first})")


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
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001  # after a failed peer: the error that ended training was reported
            pass
