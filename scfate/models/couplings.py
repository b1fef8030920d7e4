"""Reflow couplings: the ``(theta_0, ODE_teacher(theta_0))`` pairs a few-step student is trained on (DESIGN §2.5),
drawn over the training conditions and their contexts' training control cells, and the loader that batches them."""

from __future__ import annotations

import math

import numpy as np
import torch

from scfate.flow.reflow import Couplings, draw_teachers, teacher_endpoints


def _sources(student, dm, n: int, probs: torch.Tensor, seed: int, split: str) -> Couplings:
    """``n`` rows with their source, conditioning and teacher index; ``theta1`` left to fill. The split's conditions
    are cycled in shuffled order so each gets its share of the rows, one datamodule batch of one condition at a
    time, on its context's training control cells (validation ones for ``split="val"``)."""
    rng, gen = np.random.default_rng([seed, 11]), torch.Generator().manual_seed(seed)
    groups, b = dm.groups[split], dm.batch_size
    controls = dm.controls if split == "train" else dm.heldout_controls
    n_draws = math.ceil(n / b)
    order = np.concatenate([rng.permutation(len(groups)) for _ in range(math.ceil(n_draws / len(groups)))])
    rows = []
    for c in range(n_draws):
        g, m = groups[order[c]], min(b, n - c * b)
        enc = dm.encode[(g.context, g.condition)]
        ctrl = controls[g.context]
        idx = rng.choice(ctrl, m, replace=len(ctrl) < m)
        # the backbone is shared by every teacher (checked before), so the student's latents are theirs too
        z = student.backbone.encode(torch.from_numpy(dm.reader(idx)), enc["context"]).float()
        rows.append(Couplings(theta0=student._source(enc["perturbation"], m), theta1=torch.empty(0), z_ctrl=z,
                              ctrl_index=torch.as_tensor(idx, dtype=torch.long),
                              perturbation=enc["perturbation"].expand(m), context=enc["context"].expand(m),
                              members=enc["members"].expand(m, -1), log10_dose=enc["log10_dose"].expand(m),
                              teacher=draw_teachers(m, probs, gen)))
    return Couplings.cat(rows)


@torch.no_grad()
def generate_couplings(student, teachers: list, dm, n: int, teacher_steps: int, probs: torch.Tensor, seed: int,
                       chunk: int = 4096, split: str = "train") -> Couplings:
    """``n`` couplings of the ``split``'s conditions (``train``; ``val``: the student's model selection) from a
    set-up datamodule ``dm``. ``theta_0`` is the student's source; each row's teacher is
    drawn from ``probs`` (one probability per entry of ``teachers``); ``theta_1`` is that teacher's ODE solution at
    ``teacher_steps`` with its own sampler, conditioned on the row's control latent, perturbation and context."""
    out = _sources(student, dm, n, probs, seed, split)
    out.theta1 = torch.empty_like(out.theta0)
    # many conditions per ODE solve (each row carries its own conditioning), ``chunk`` rows at a time for memory
    for start in range(0, len(out), chunk):
        part = out[slice(start, start + chunk)]
        for j in part["teacher"].unique().tolist():
            sel = (part["teacher"] == j).nonzero().squeeze(1)
            t = teachers[j]
            e_p = t.v_net.embed(part["members"][sel], part["log10_dose"][sel])
            z, ctx = part["z_ctrl"][sel], part["context"][sel]

            def v_fn(theta, tt, t=t, e_p=e_p, z=z, ctx=ctx):
                return t.v_net(theta, tt, e_p, z, ctx).float()

            out.theta1[start + sel] = teacher_endpoints(t.path, v_fn, part["theta0"][sel], teacher_steps,
                                                        t.hparams.sampler)
    return out


class EpochBatches:
    """Batches of row indices, shuffled by ``(seed, epoch)`` alone (in order for validation), ``drop_last`` when
    shuffled and there is more than one batch. Lightning calls ``set_epoch`` every epoch; the epoch is read at the
    first batch, not when the iterator is made (a resumed run makes its first iterator before ``set_epoch``).
    A sampler with its own advancing generator would restart that stream on a resume and replay epoch 0's order."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle, self.epoch = n, batch_size, seed, shuffle, 0
        self.drop_last = shuffle and n > batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])))
        else:
            order = torch.arange(self.n)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)


def coupling_loader(couplings: Couplings, batch_size: int, seed: int, shuffle: bool = True):
    """Batches of whole rows (shuffled by (seed, epoch), or in order for validation); the sampler yields index
    lists, so a batch is one tensor gather, not a per-row collate."""
    from torch.utils.data import DataLoader

    return DataLoader(couplings, sampler=EpochBatches(len(couplings), batch_size, seed, shuffle), batch_size=None)
