"""Batched tensor augmentation (no per-image Python loops); works on uint8 or float ``(N, C, H, W)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import DataError

__all__ = ["augment_batch", "pad", "random_crop", "random_cutout", "random_flip"]


def _check(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"augmentation expects a (N, C, H, W) tensor, got {shape}")


def _reflect_index(size: int, padding: int, device: torch.device) -> torch.Tensor:
    # indices -p .. size-1+p mirrored without repeating the edge (like numpy/torch "reflect")
    i = torch.arange(-padding, size + padding, device=device)
    i = i.abs()
    return (size - 1) - (size - 1 - i).abs()


def pad(images: torch.Tensor, padding: int, mode: str = "reflect") -> torch.Tensor:
    """Pad H and W by ``padding`` on each side; ``mode`` is "reflect", "zeros" or "replicate"."""
    _check(images)
    if padding == 0:
        return images
    if padding < 0:
        raise DataError(f"padding must be >= 0, got {padding}")
    h, w = images.shape[-2:]
    if mode == "zeros":
        return F.pad(images, (padding, padding, padding, padding), mode="constant", value=0)
    if mode == "reflect":
        if padding >= h or padding >= w:
            raise DataError(f"reflect padding {padding} must be smaller than the image size {h}x{w}")
        ri, ci = _reflect_index(h, padding, images.device), _reflect_index(w, padding, images.device)
    elif mode == "replicate":
        ri = torch.arange(-padding, h + padding, device=images.device).clamp_(0, h - 1)
        ci = torch.arange(-padding, w + padding, device=images.device).clamp_(0, w - 1)
    else:
        raise DataError(f"padding mode must be 'reflect', 'zeros' or 'replicate', got {mode!r}")
    # index_select works for every dtype, including uint8
    return images.index_select(-2, ri).index_select(-1, ci)


def random_crop(
    images: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    mode: str = "reflect",
) -> torch.Tensor:
    """Pad once, then crop back to ``H x W`` at an independent random offset per image.

    Offsets are uniform in ``[0, 2 * padding]`` per axis, drawn on the CPU from ``generator`` so the
    result is deterministic for a given generator state regardless of device. Implemented with a
    single advanced-indexing gather (no loop over images). ``padding=0`` returns ``images`` unchanged.
    """
    _check(images)
    if padding == 0:
        return images
    n, c, h, w = images.shape
    padded = pad(images, padding, mode)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0].view(n, 1) + torch.arange(h, device=images.device).view(1, h)  # (N, H)
    cols = offsets[1].view(n, 1) + torch.arange(w, device=images.device).view(1, w)  # (N, W)
    bi = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    ci = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[bi, ci, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def random_flip(
    images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Flip each image left-right with probability ``p`` (one ``torch.where``)."""
    _check(images)
    mask = torch.rand(images.shape[0], generator=generator) < p
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def random_cutout(
    images: torch.Tensor, size: int, generator: torch.Generator | None = None, fill: float = 0.0
) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017): set one ``size x size`` square per image to ``fill``.

    The square's centre is uniform over the image, so near an edge only part of it lies inside (as in
    the paper: a partial square is what makes the model see every region both erased and intact).
    Apply it to normalised images with ``fill=0`` (the dataset mean). One mask, no loop over images.
    """
    _check(images)
    if size < 0:
        raise DataError(f"cutout size must be >= 0, got {size}")
    if size == 0:
        return images
    n, _, h, w = images.shape
    centre = torch.stack([torch.randint(0, h, (n,), generator=generator), torch.randint(0, w, (n,), generator=generator)]).to(images.device)
    top, left = centre[0] - size // 2, centre[1] - size // 2
    rows = torch.arange(h, device=images.device).view(1, h)
    cols = torch.arange(w, device=images.device).view(1, w)
    in_rows = (rows >= top.view(n, 1)) & (rows < (top + size).view(n, 1))  # (N, H)
    in_cols = (cols >= left.view(n, 1)) & (cols < (left + size).view(n, 1))  # (N, W)
    mask = (in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w))
    return images.masked_fill(mask, fill)


def augment_batch(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip: bool = True,
    mode: str = "reflect",
) -> torch.Tensor:
    """The standard CIFAR recipe: random crop with ``padding`` then random horizontal flip."""
    out = random_crop(images, padding, generator, mode)
    if flip:
        out = random_flip(out, generator)
    return out
