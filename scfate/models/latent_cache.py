"""The frozen backbone's latents of the training cells, kept by row while the flow head trains.

The flow head encodes its batches' control and perturbed cells with a backbone that never changes, and the paired
batches draw the same few thousand cells again and again (1,800 batches in the quickstart): a batch whose rows are
all known takes its latents from here instead of two encoder passes. A batch is encoded whole, as without the cache,
whenever any of its rows is new, so every latent is the very tensor the encoder gives for that batch. Bounded:
above ``MAX_BYTES`` of latents (a genome-wide screen) it switches itself off and batches are encoded as before."""

from __future__ import annotations

import torch

MAX_BYTES = 64 * 2**20  # 1M cells x 64 latent dims would be 256 MB: peak memory must not grow with the screen


class LatentCache:
    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes, self.enabled = max_bytes, True
        self.z: torch.Tensor | None = None
        self.known: torch.Tensor | None = None

    def encode(self, encode, x: torch.Tensor, rows: torch.Tensor | None, context: torch.Tensor) -> torch.Tensor:
        """``encode(x, context)``, or the stored latents of ``rows`` (the rows of ``x`` in the prepared matrix)."""
        if rows is None or not self.enabled:
            return encode(x, context)
        rows = rows.to(torch.long)
        n_rows = int(rows.max()) + 1
        if self.known is not None and len(self.known) >= n_rows and bool(self.known[rows].all()):
            return self.z[rows]
        z = encode(x, context)
        if self._fit(n_rows, z):
            self.z[rows] = z.detach()
            self.known[rows] = True
        return z

    def _fit(self, n_rows: int, z: torch.Tensor) -> bool:
        """Room for rows ``< n_rows``: grown by doubling, up to the bound; past it the cache switches off."""
        if self.z is not None and len(self.z) >= n_rows:
            return True
        cap = self.max_bytes // (z.shape[1] * z.element_size())
        if n_rows > cap:
            self.enabled, self.z, self.known = False, None, None
            return False
        size = min(cap, max(n_rows, 2 * (0 if self.z is None else len(self.z))))
        grown = torch.zeros(size, z.shape[1], dtype=z.dtype, device=z.device)
        known = torch.zeros(size, dtype=torch.bool, device=z.device)
        if self.z is not None:
            grown[:len(self.z)], known[:len(self.known)] = self.z, self.known
        self.z, self.known = grown, known
        return True
