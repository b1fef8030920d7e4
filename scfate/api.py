"""Python API: ``model = scfate.load(path_or_hf); pred = model.predict(adata_ctrl, ["KLF1+MAP2K6"], n_cells=500)``.

AnnData in, AnnData out (scverse conventions): predicted cells with named genes and ``obs['perturbation']``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np

from scfate.data.errors import DataError

log = logging.getLogger("scfate")


def _resolve(ref: str | Path) -> Path:
    """A flow_best.pt path, a run folder holding one, or ``hf://OWNER/NAME/path/to/run`` (fetched with its
    backbone through huggingface_hub; offline, the error says what to fetch)."""
    ref = str(ref)
    if ref.startswith("hf://"):
        import torch
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        parts = ref.removeprefix("hf://").strip("/").split("/")
        repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
        name = sub if sub.endswith(".pt") else f"{sub}/flow_best.pt"
        try:
            flow = Path(hf_hub_download(repo, name))
            ckpt = torch.load(flow, map_location="cpu", weights_only=True)
            hf_hub_download(repo, _normalise(Path(name).parent.as_posix(), ckpt["backbone_path"]))
        except LocalEntryNotFoundError as exc:
            raise DataError(f"Cannot fetch {name} (and its backbone) from the Hub repo {repo}: offline or "
                            f"unreachable. Fetch it with `huggingface-cli download {repo} --include '{Path(name).parent}/*' "
                            "'backbones/*'` when online, or pass a local path.") from exc
        return flow
    path = Path(ref)
    if path.is_dir():
        path = path / "flow_best.pt"
    if not path.is_file():
        raise DataError(f"No flow-head checkpoint at {ref}: give a flow_best.pt file, its run folder, or hf://...")
    return path


def _normalise(folder: str, rel: str) -> str:
    """Join a repo folder with a relative path that may climb out of it ('../../backbones/x/backbone.pt')."""
    parts = folder.split("/") if folder else []
    for piece in rel.split("/"):
        if piece == "..":
            parts.pop()
        elif piece not in ("", "."):
            parts.append(piece)
    return "/".join(parts)


class ScfateModel:
    """A trained flow head with its backbone, ready to predict perturbed cells."""

    def __init__(self, path: Path):
        from scfate.models.flow_export import load_flow

        self.head, self.ckpt = load_flow(path)
        self.genes, self.units = list(self.ckpt["genes"]), {u: i for i, u in enumerate(self.ckpt["units"])}
        self.contexts, self.perturbations = list(self.ckpt["contexts"]), list(self.ckpt["perturbations"])
        self.drug = self.ckpt["perturbation_type"] == "drug"
        self.prior = None
        if self.ckpt.get("prior") == "krr":
            from scfate.prior import KRRPrior

            self.prior = KRRPrior.from_state(self.ckpt["prior_state"])

    def _prior_mean(self, members: list[str]):
        """The KRR prior's mean angle for any set of known members (sum of their standardised features)."""
        import torch

        feats = self.head.v_net.embed.unit_features[[self.units[m] for m in members]].sum(0, keepdim=True)
        if self.prior is None:
            return torch.zeros(self.head.prior_mu.shape[1])
        return self.prior.predict(feats)[0]

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
        import torch

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
        ctx = torch.tensor(self.contexts.index(context))
        blocks, obs = [], []
        for name in perturbations:
            members = self._members(name)
            canonical = "+".join(members)
            idx = rng.choice(len(X), n_cells, replace=replace)
            log10_dose = torch.tensor(np.log10(dose) if (self.drug and dose) else 0.0, dtype=torch.float32)
            x = self.head.sample_cells(torch.from_numpy(X[idx]), ctx, None, torch.tensor([self.units[m] for m in members]),
                                       log10_dose, n_steps, theta_mu=self._prior_mean(members))
            blocks.append(x.float().numpy())
            obs += [{"perturbation": canonical, "context": context, "control_cell": str(adata_ctrl.obs_names[i])}
                    for i in idx]
        out = ad.AnnData(np.concatenate(blocks), obs=pd.DataFrame(obs), var=pd.DataFrame(index=self.genes))
        out.obs_names = [f"pred{i}" for i in range(out.n_obs)]
        return out


def load(path_or_hf: str | Path) -> ScfateModel:
    return ScfateModel(_resolve(path_or_hf))
