"""Choose the flow's spread on validation perturbations: the scale of the sampled angles around their circular
mean (``FlowHead.hparams.spread``) whose predicted cells are closest, by MMD in a PCA space of training cells, to
the validation perturbations' true cells. MMD, not the energy distance: with squared Euclidean distances the
energy distance is ``2 |mean_x - mean_y|^2`` in expectation (the variance terms cancel), so it cannot see a
spread. Scale 0 is the flow switched off, so the cells are never chosen worse than the model's own mean."""

from __future__ import annotations

import numpy as np
import torch

from scfate.eval.metrics import mmd

SCALES = (1.0, 0.5, 0.0)


@torch.no_grad()
def select_spread(head, dm, scales=SCALES, n: int = 128, seed: int = 0) -> dict:
    """{"spread": best scale, "val_mmd": {scale: mean MMD}} on ``dm``'s validation conditions
    (held-out control cells; the test set is never read). Leaves ``head.hparams.spread`` at the best scale."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    train_cells = np.concatenate([g.cells for g in dm.groups["train"]] + [dm.controls[c] for c in dm.contexts])
    pick = lambda idx: np.sort(rng.choice(idx, min(n, len(idx)), replace=False))  # noqa: E731
    pca = PCA(n_components=min(30, dm.n_genes - 1), random_state=0).fit(dm.reader(pick(train_cells)))
    draws = [(g, dm.reader(pick(dm.heldout_controls[g.context])), dm.reader(pick(g.cells))) for g in dm.groups["val"]]
    scores = {}
    for s in scales:
        head.hparams.spread = float(s)
        gen = torch.Generator().manual_seed(seed)
        dists = []
        for g, ctrl, true in draws:
            enc = dm.encode[(g.context, g.condition)]
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # the same noise per scale
            cells = head.sample_cells(torch.from_numpy(ctrl), enc["context"], enc["perturbation"], enc["members"],
                                      enc["log10_dose"]).double().numpy()
            dists.append(mmd(pca.transform(cells), pca.transform(true)))
        scores[s] = float(np.mean(dists))
    best = min(scores, key=lambda s: (scores[s], -s))
    head.hparams.spread = float(best)
    return {"spread": float(best), "val_mmd": {str(k): v for k, v in scores.items()}}
