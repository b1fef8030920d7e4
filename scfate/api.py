"""Python API: ``model = scfate.load(path_or_hf); pred = model.predict(adata_ctrl, ["KLF1+MAP2K6"], n_cells=500)``.

AnnData in, AnnData out (scverse conventions): predicted cells with named genes and ``obs['perturbation']``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np

from scfate.errors import DataError

log = logging.getLogger("scfate")


def _resolve(ref: str | Path) -> Path:
    """A flow_best.pt path, a run folder holding one, or ``hf://OWNER/NAME[@REV]/path/to/run`` (see scfate.hub)."""
    from scfate.hub import resolve_checkpoint

    return resolve_checkpoint(ref, "flow_best.pt")


class ScfateModel:
    """A trained flow head with its backbone, ready to predict perturbed cells."""

    def __init__(self, path: Path):
        from scfate.models.flow_export import load_flow

        self.head, self.ckpt = load_flow(path, zero_shot=False)  # prediction: a leak only warns
        self.genes, self.units = list(self.ckpt["genes"]), {u: i for i, u in enumerate(self.ckpt["units"])}
        self.contexts, self.perturbations = list(self.ckpt["contexts"]), list(self.ckpt["perturbations"])
        self.drug = self.ckpt["perturbation_type"] == "drug"
        self.prior, self.space = None, self.ckpt.get("prior_space", "angle")
        if self.ckpt.get("prior") == "krr" and self.space == "expression":
            from scfate.prior.additive import AdditivePrior

            self.prior = [AdditivePrior.from_state(st) for st in self.ckpt["prior_state"]["contexts"]]
        elif self.ckpt.get("prior") == "krr":
            from scfate.prior import KRRPrior

            self.prior = KRRPrior.from_state(self.ckpt["prior_state"])

    def _prior_mean(self, members: list[str], z_ctrl, ctx):
        """The prior's mean angle for any set of known members, and its expression offset (or None). Angle space:
        KRR of the summed standardised features. Expression space: the context's additive prior, lifted through
        the decoder on the given control latents ``z_ctrl`` exactly as in training (scfate.prior.lift), and with
        ``lift_residual`` the part of the shift the lifted angle does not decode to on these cells."""
        import torch

        idx = [self.units[m] for m in members]
        if self.prior is None:
            return torch.zeros(self.head.prior_mu.shape[1]), None
        if self.space == "angle":
            return self.prior.predict(self.head.v_net.embed.unit_features[idx].sum(0, keepdim=True))[0], None
        from scfate.lie import circular_mean
        from scfate.prior.lift import lift_residual, lift_shifts

        bb = self.head.backbone
        delta = self.prior[int(ctx)].predict([idx])
        theta, _ = lift_shifts(bb.group.act, bb.decode, [delta], [z_ctrl[: int(self.ckpt["lift_cells"])]], [ctx],
                               circular_mean(self.head.prior_mu)[None], steps=int(self.ckpt["lift_steps"]),
                               lr=float(self.ckpt["lift_lr"]))
        if not self.ckpt.get("lift_residual"):
            return theta[0], None
        return theta[0], lift_residual(bb.group.act, bb.decode, theta, delta, z_ctrl, ctx)[0]

    def _members(self, name: str) -> list[str]:
        members = [name] if self.drug else sorted({m.strip() for m in name.split("+") if m.strip()})
        unknown = [m for m in members if m not in self.units]
        if unknown:
            hints = {m: difflib.get_close_matches(m, list(self.units), n=3) for m in unknown}
            raise DataError(f"Unknown perturbation member(s) {unknown} in {name!r}: this model has features for "
                            f"{len(self.units)} {'drugs' if self.drug else 'genes'}. Close matches: {hints}.")
        return members

    def predict(self, adata_ctrl, perturbations: list[str], n_cells: int = 500, context: str | None = None,
                dose: float | None = None, seed: int = 0, n_steps: int | None = None):
        """Predicted cells for each perturbation: AnnData [len(perturbations) * n_cells, genes]."""
        import anndata as ad
        import pandas as pd

        from scfate.data.schema import check_same_genes

        if context is None:
            if len(self.contexts) > 1:
                raise DataError(f"This model knows several contexts {self.contexts}: pass context=NAME.")
            context = self.contexts[0]
        if context not in self.contexts:
            raise DataError(f"context={context!r} is unknown; valid: {self.contexts}.")
        missing = sorted(set(self.genes) - set(adata_ctrl.var_names))
        if missing:
            check_same_genes(self.genes, list(adata_ctrl.var_names), "adata_ctrl",
                             "Give control cells measured on the model's genes (model.genes).")
        X = adata_ctrl[:, self.genes].X
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
        rng = np.random.default_rng(seed)
        replace = n_cells > len(X)
        if replace:
            log.warning("n_cells=%d is more than the %d control cells given: sampling them with replacement",
                        n_cells, len(X))
        from scfate.models.predictor import Condition, FlowPredictor

        # one predictor for every door: a perturbation of the vocabulary is predicted exactly as evaluate.py does
        predictor = FlowPredictor(self.head, self.perturbations, self.contexts, self.units, "scfate", n_steps,
                                  prior_of_new=self._prior_mean)
        blocks, obs = [], []
        for name in perturbations:
            members = self._members(name)
            canonical = "+".join(members)
            idx = rng.choice(len(X), n_cells, replace=replace)
            cond = Condition(context, canonical, canonical, members,
                             float(dose) if (self.drug and dose) else float("nan"), np.zeros(0))
            blocks.append(predictor.predict(cond, X[idx]).cells.astype(np.float32))
            obs += [{"perturbation": canonical, "context": context, "control_cell": str(adata_ctrl.obs_names[i])}
                    for i in idx]
        out = ad.AnnData(np.concatenate(blocks), obs=pd.DataFrame(obs), var=pd.DataFrame(index=self.genes))
        out.obs_names = [f"pred{i}" for i in range(out.n_obs)]
        return out


def load(path_or_hf: str | Path) -> ScfateModel:
    return ScfateModel(_resolve(path_or_hf))
