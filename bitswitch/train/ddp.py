"""Data-parallel training under ``torchrun`` (nanoGPT style: the same script runs with or without it).

Every process iterates the same seeded :class:`~bitswitch.data.TensorLoader` (same permutation, same
augmentation) and keeps the rows ``rank::world`` of each global batch, so the union of the shards is
exactly the single-process batch. Gradients are averaged with one ``all_reduce`` per backward pass
over the parameters that received a gradient (the same set on every rank, since every rank visits
the same bit-widths), which is what ``DistributedDataParallel`` would do, without its
unused-parameter bookkeeping (each bit-width leaves the other bits' scales and BatchNorms unused).
BatchNorm running statistics are averaged across processes before every evaluation. Only rank 0
logs and writes files.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup(device: str) -> tuple[DistInfo, str]:
    """Initialise the process group when ``RANK`` is set (torchrun); returns the info and device."""
    if int(os.environ.get("RANK", -1)) == -1:
        return DistInfo(), device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if world == 1:
        return DistInfo(), device
    if device.startswith("cuda"):
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
        if int(os.environ.get("LOCAL_WORLD_SIZE", -1)) == world and "GLOO_SOCKET_IFNAME" not in os.environ:
            # one machine: gloo would bind to what the host name resolves to, and where it does not
            # resolve (no DNS, as on CI runners) every group set-up stalls; the loopback always works
            lo = loopback_interface()
            if lo:
                os.environ["GLOO_SOCKET_IFNAME"] = lo
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local), device


def loopback_interface() -> str | None:
    """The loopback network interface's name (``lo`` on Linux, ``lo0`` on macOS), if there is one."""
    names = {name for _, name in socket.if_nameindex()}
    return next((n for n in ("lo", "lo0") if n in names), None)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard_batches(batches, info: DistInfo) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Keep this rank's rows of every global batch (strided, so shards differ by at most one row)."""
    for x, y in batches:
        if info.enabled:
            x, y = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
        yield x, y


def batch_scaled_params(model: nn.Module) -> list[nn.Parameter]:
    """Activation-scale parameters, whose LSQ gradient scale ``1/sqrt(numel·p)`` counts the (local) batch:
    with ``W`` processes on ``B/W`` rows each, their gradient is ``sqrt(W)`` larger than one process's."""
    from ..nn.layers import QuantLayer

    return [p for m in model.modules() if isinstance(m, QuantLayer) for p in m.act_quant.scales.values()]


def world_size(model: nn.Module) -> int:
    """The number of processes a ``DistributedDataParallel`` model averages over (1 for any other model)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return dist.get_world_size(model.process_group)
    return 1


def average_gradients(model: nn.Module, info: DistInfo) -> None:
    """Average gradients across processes (one flattened all_reduce).

    The activation quantizer's LSQ gradient scale is ``1/sqrt(numel · p)`` with ``numel`` counting
    the (local) batch, so a shard of ``B/W`` rows scales its gradient by ``sqrt(W)`` more than the
    full batch would; it is divided back out so N processes compute what one process would.
    """
    if not info.enabled:
        return
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(info.world_size)
    batch_scaled = {id(p) for p in batch_scaled_params(model)}
    offset = 0
    for p in params:
        n = p.grad.numel()
        if id(p) in batch_scaled:
            flat[offset : offset + n].div_(info.world_size**0.5)
        offset += n
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


@torch.no_grad()
def average_buffers(model: nn.Module, info: DistInfo) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across processes."""
    if not info.enabled:
        return
    for b in model.buffers():
        if b.is_floating_point():
            dist.all_reduce(b)
            b.div_(info.world_size)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


__all__ = ["DistInfo", "average_buffers", "average_gradients", "barrier", "batch_scaled_params", "setup", "shard_batches", "teardown", "world_size"]
