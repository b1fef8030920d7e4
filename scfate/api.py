"""Python API: ``model = scfate.load(path_or_hf); pred = model.predict(adata_ctrl, ["KLF1+MAP2K6"], n_cells=500)``.

AnnData in, AnnData out (scverse conventions): predicted cells with named genes and ``obs['perturbation']``.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import numpy as np

from scfate.errors import DataError, UsageError

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

    def _members(self, name) -> list[str]:
        """A perturbation's member units, as the data layer canonicalises labels (``B+A`` -> ``A+B``, GEARS's
        ``A+ctrl`` -> ``A``); refuses what names nothing, the control condition and unknown members."""
        from scfate.data.schema import CONTROL, canonical_perturbation
        from scfate.data.spec import CONTROL_VALUES

        what = "drug" if self.drug else "gene"
        if not isinstance(name, str):
            raise UsageError(f"Perturbation {name!r} is a {type(name).__name__}, not a name: give {what} names as "
                             f"str, e.g. {self._example()}.")
        sep = None if self.drug else "+"
        if not [m for m in (name.split(sep) if sep else [name]) if m.strip()]:
            raise UsageError(f"Perturbation {name!r} names no {what}: give a {what} name"
                             f"{'' if self.drug else ' or several joined by +'}, e.g. {self._example()}.")
        canonical = canonical_perturbation(name, set(CONTROL_VALUES), sep)
        if canonical == CONTROL:
            raise UsageError(f"{name!r} is the control condition, not a perturbation: the control cells are "
                             f"adata_ctrl itself. Give perturbed {what}s, e.g. {self._example()}.")
        members = [canonical] if self.drug else canonical.split("+")
        unknown = [m for m in members if m not in self.units]
        if unknown:
            hints = {m: difflib.get_close_matches(m, list(self.units), n=3) for m in unknown}
            raise DataError(f"Unknown perturbation member(s) {unknown} in {name!r}: this model has features for "
                            f"{len(self.units)} {what}s. Close matches: {hints}.")
        return members

    def _example(self) -> str:
        return repr(self.perturbations[:2] or list(self.units)[:2])

    def _names(self, perturbations) -> list:
        if isinstance(perturbations, str):  # predict(ctrl, "KLF1+MAP2K6") reads naturally: one perturbation
            return [perturbations]
        try:
            names = list(perturbations)
        except TypeError:
            raise UsageError(f"perturbations={perturbations!r}: give a list of perturbation names (or one name "
                             f"as a str), e.g. {self._example()}.") from None
        if not names:
            raise UsageError(f"perturbations is empty: give at least one name, e.g. {self._example()}.")
        return names

    def _dose(self, dose) -> float:
        if dose is None:
            if self.drug and self.ckpt.get("use_dose"):  # NaN would silently predict at dose 1 (log10 = 0)
                raise UsageError("This drug model conditions on the dose: pass dose=VALUE (> 0, in the units of "
                                 "the training data's dose column, e.g. nM).")
            return float("nan")
        if not self.drug:
            raise UsageError(f"dose={dose!r}: this model predicts gene perturbations, which have no dose; "
                             "leave dose unset.")
        if isinstance(dose, bool) or not isinstance(dose, (int, float, np.integer, np.floating)) \
                or not np.isfinite(dose) or dose <= 0:
            raise UsageError(f"dose={dose!r}: a dose must be a number > 0 (it enters the model as log10(dose)).")
        return float(dose)

    def _context(self, adata_ctrl, context) -> str:
        """The context to predict in; refuses control cells that another context's labels mark (obs columns
        holding the model's context names, such as the prepared data's scfate_context)."""
        from pandas.api.types import is_numeric_dtype

        from scfate.data.schema import IS_CONTROL

        obs = adata_ctrl.obs
        labelled = {}
        if self.contexts != ["all"]:  # "all": the training data had no context column to look for
            for col in obs.columns:
                if not is_numeric_dtype(obs[col]) and set(self.contexts) & set(obs[col].astype(str).unique()):
                    labelled[col] = obs[col].astype(str).value_counts()
        if context is None:
            if len(self.contexts) > 1:
                seen = {col: sorted(counts.index) for col, counts in labelled.items()}
                raise DataError(f"This model knows several contexts {self.contexts}: pass context=NAME."
                                + (f" adata_ctrl.obs says {seen}." if seen else ""))
            context = self.contexts[0]
        if context not in self.contexts:
            raise DataError(f"context={context!r} is unknown; valid: {self.contexts}.")
        for col, counts in labelled.items():
            other = {k: int(v) for k, v in counts.items() if k != context and v}
            if other:
                raise DataError(f"adata_ctrl holds {sum(other.values())} cells of another context than "
                                f"context={context!r}: obs[{col!r}] counts {other}. Give only that context's "
                                f"control cells (adata_ctrl[adata_ctrl.obs[{col!r}] == {context!r}]) or set "
                                "context= to theirs.")
        if IS_CONTROL in obs.columns and not obs[IS_CONTROL].astype(bool).all():
            n = int((~obs[IS_CONTROL].astype(bool)).sum())
            raise DataError(f"adata_ctrl holds {n} perturbed cells (obs[{IS_CONTROL!r}] is False): give control "
                            f"cells only, e.g. adata[adata.obs[{IS_CONTROL!r}]].")
        return context

    def _control_matrix(self, adata_ctrl) -> np.ndarray:
        """The model's genes of the control cells, dense float32, checked as prepare checks its input."""
        from scfate.data.schema import check_gene_names, check_log1p, check_same_genes

        var = adata_ctrl.var_names
        check_gene_names(var[var.isin(self.genes)])
        if set(self.genes) - set(var):
            check_same_genes(self.genes, list(var), "adata_ctrl",
                             "Give control cells measured on the model's genes (model.genes).")
        X = adata_ctrl[:, self.genes].X
        X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
        check_log1p(X, "adata_ctrl")
        return X

    def predict(self, adata_ctrl, perturbations: list[str] | str, n_cells: int = 500, context: str | None = None,
                dose: float | None = None, seed: int = 0, n_steps: int | None = None):
        """Predicted cells for each perturbation: AnnData [len(perturbations) * n_cells, genes].

        ``adata_ctrl``: control cells of ``context`` on log1p-normalised values (as prepare writes them);
        ``perturbations``: names such as ``"KLF1+MAP2K6"`` (a list, or one name); the same ``seed`` gives the same
        cells bit for bit (on CPU), without touching the caller's global RNG."""
        import anndata as ad
        import pandas as pd
        import torch

        if not isinstance(adata_ctrl, ad.AnnData):
            raise UsageError(f"adata_ctrl is a {type(adata_ctrl).__name__}: give an AnnData of control cells, e.g. "
                             "ad.AnnData(X, var=pd.DataFrame(index=model.genes)).")
        n_cells, seed = _count(n_cells, "n_cells", 1), _count(seed, "seed", 0)
        names, dose = self._names(perturbations), self._dose(dose)
        if adata_ctrl.n_obs == 0:
            raise DataError("adata_ctrl has no cells: give the control cells of the context to predict in (a few "
                            "hundred make a representative sample).")
        context = self._context(adata_ctrl, context)
        X = self._control_matrix(adata_ctrl)
        members_of = [self._members(name) for name in names]  # every name checked before any is predicted
        from scfate.models.predictor import Condition, FlowPredictor

        # one predictor for every door: a perturbation of the vocabulary is predicted exactly as evaluate.py does;
        # its own generator makes the flow's source noise a function of `seed` alone
        predictor = FlowPredictor(self.head, self.perturbations, self.contexts, self.units, "scfate", n_steps,
                                  prior_of_new=self._prior_mean, generator=torch.Generator().manual_seed(seed))
        rng = np.random.default_rng(seed)
        replace = n_cells > len(X)
        if replace:
            log.warning("n_cells=%d is more than the %d control cells given: sampling them with replacement",
                        n_cells, len(X))
        from scfate.utils.progress import Progress

        # hundreds of perturbations x n_cells through the flow take minutes: say how far it got (every 10, at most
        # every 5 s, so a quick call stays silent)
        progress = Progress(len(members_of), f"predict ({n_cells} cells each, context {context})", "perturbations")
        blocks, obs = [], []
        draws = [rng.choice(len(X), n_cells, replace=replace) for _ in members_of]
        # the cells drawn, encoded once per call (not once per perturbation), and only those: a user may pass many
        # more control cells than one call samples
        used = np.unique(np.concatenate(draws))
        controls = predictor.encode(X[used], context)
        for members, idx in zip(members_of, draws):
            canonical = "+".join(members)
            cond = Condition(context, canonical, canonical, members, dose, np.zeros(0))
            blocks.append(predictor.predict(cond, controls.take(np.searchsorted(used, idx))).cells.astype(np.float32))
            obs += [{"perturbation": canonical, "context": context, "control_cell": str(adata_ctrl.obs_names[i])}
                    for i in idx]
            progress.step()
        obs = pd.DataFrame(obs, index=[f"pred{i}" for i in range(len(obs))])
        return ad.AnnData(np.concatenate(blocks), obs=obs, var=pd.DataFrame(index=self.genes))


def _count(value, name: str, least: int) -> int:
    # a float (500.0), a bool or a negative value would otherwise fail deep inside numpy or torch
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not least <= value < 2**63:
        raise UsageError(f"{name}={value!r}: must be an integer >= {least}"
                         + (", e.g. n_cells=500." if name == "n_cells" else "."))
    return int(value)


def load(path_or_hf: str | Path) -> ScfateModel:
    return ScfateModel(_resolve(path_or_hf))
