"""Flow-matching machinery on Lie groups (DESIGN §2.2): paths, minibatch OT couplings, samplers. Pure torch."""

from scfate.flow.coupling import ot_pairs, sq_cost, torus_features
from scfate.flow.paths import FlowPath, SOPath, TorusPath
from scfate.flow.samplers import integrate

__all__ = ["FlowPath", "SOPath", "TorusPath", "integrate", "ot_pairs", "sq_cost", "torus_features"]
