"""Perturbation features: gene vectors from GO / PROGENy / user embeddings, drug vectors from structure."""

from scfate.data.features.base import PerturbationFeatures, assemble
from scfate.data.features.drugs import build_drug_features, log10_dose, tanimoto_matrix
from scfate.data.features.genes import build_gene_features, go_embedding, load_user_embedding

__all__ = [
    "PerturbationFeatures",
    "assemble",
    "build_drug_features",
    "build_gene_features",
    "go_embedding",
    "load_user_embedding",
    "log10_dose",
    "tanimoto_matrix",
]
