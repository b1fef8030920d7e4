"""The prior's settings as one plain dataclass: what ``conf/prior/*.yaml`` instantiates and what the fitting
functions take, so no DictConfig reaches below the pipelines. The YAML holds the defaults (one default per key)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scfate.errors import UsageError

PRIORS = ("krr", "none")
SPACES = ("angle", "expression", "auto")


@dataclass(frozen=True)
class PriorSettings:
    name: str  # krr | none
    kernel: str  # rbf | tanimoto (fingerprints)
    krr_gamma: float | None
    krr_alpha: float | None
    select: bool  # choose alpha and gamma on validation perturbations
    space: str  # angle | expression | auto (chosen on validation perturbations)
    auto_margin: float
    lift_cells: int
    lift_steps: int
    lift_lr: float
    lift_residual: bool
    residual_cells: int
    # expression space: candidates of the mean predictor, one chosen per class of perturbation by leave-one-out
    # over the non-test perturbations (scfate.prior.mean_select); empty: the member-additive prior alone
    mean_candidates: tuple[str, ...]

    def __post_init__(self):
        if self.name not in PRIORS:
            raise UsageError(f"prior={self.name!r} is not a prior; valid: {list(PRIORS)}.")
        if self.space not in SPACES:
            raise UsageError(f"prior.space={self.space!r}; valid: {list(SPACES)}.")
        from scfate.prior.mean_select import CANDIDATES

        object.__setattr__(self, "mean_candidates", tuple(self.mean_candidates or ()))
        unknown = sorted(set(self.mean_candidates) - set(CANDIDATES))
        if unknown:
            raise UsageError(f"prior.mean_candidates: unknown {unknown}; valid: {list(CANDIDATES)}.")

    def to_dict(self) -> dict:
        return asdict(self)
