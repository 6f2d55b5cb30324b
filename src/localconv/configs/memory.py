"""Memory estimate of a cfg network, made layer by layer *before* anything is allocated.

A layer file is a few lines of text, and ``outputs=2000000`` on an fc layer asks for billions of
parameters: allocating and initialising them first takes minutes and ends in an allocator
traceback. The builder asks :class:`MemoryBudget` for each layer's parameters and per-image
activations before creating its module and refuses, at the layer's line, the layer that pushes
the total over what this machine can hold.

Training keeps four float32 copies of every parameter (weights, gradients, momentum increments,
averaged weights), and a checkpoint serializes the weights and the averages in memory before
writing them: six copies at the peak. Per image, each layer's output and its gradient; the
estimate counts one image, so it never refuses a network that a small batch could train.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

BYTES_PER_PARAM = 4 * 6  # float32 weights, gradients, momentum, EMA copy + the checkpoint's two in-memory copies
BYTES_PER_ACTIVATION = 4 * 2  # float32 output + its gradient, per image
MEMORY_FRACTION = 0.8  # leave the rest to the data, the interpreter and everything else


def machine_memory_bytes() -> int | None:
    """Memory this process can still get: Linux's ``MemAvailable`` (free memory plus what the page
    cache would give back), else the physical memory (``sysconf``); None where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def memory_limit_bytes() -> int | None:
    """The most a cfg network may need: ``MEMORY_FRACTION`` of the available memory (None: no limit)."""
    total = machine_memory_bytes()
    return int(total * MEMORY_FRACTION) if total else None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # not reached


@dataclass
class LayerEstimate:
    name: str
    params: int
    activations: int  # per image (output values)


@dataclass
class MemoryBudget:
    """Running totals of a network being built; ``limit`` in bytes (None: unlimited)."""

    limit: int | None = field(default_factory=memory_limit_bytes)
    limit_source: str = f"{MEMORY_FRACTION:.0%} of this machine's free memory"
    params: int = 0
    activations: int = 0
    layers: list[LayerEstimate] = field(default_factory=list)

    def needed(self, params: int = 0, activations: int = 0) -> int:
        return ((self.params + params) * BYTES_PER_PARAM
                + (self.activations + activations) * BYTES_PER_ACTIVATION)

    def problem(self, name: str, params: int, activations: int) -> str | None:
        """Add layer ``name``'s estimate, or say why the network would not fit (nothing added)."""
        need = self.needed(params, activations)
        if self.limit is not None and need > self.limit:
            return (f"the network would need about {format_bytes(need)} to train up to this layer "
                    f"({self.params + params:,} parameters x {BYTES_PER_PARAM} bytes for weights, gradients, "
                    f"momentum, averages and checkpoints, plus activations; this layer: {params:,} "
                    f"parameters), more than the {format_bytes(self.limit)} available ({self.limit_source}); make the "
                    "layer smaller")
        self.params += params
        self.activations += activations
        self.layers.append(LayerEstimate(name, params, activations))
        return None
