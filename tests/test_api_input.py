"""``scfate.load(...).predict`` validates its input as ``prepare`` does: bad values, another context's cells, bad
names and counts end in one DataError / UsageError naming the problem and the fix; the same seed gives the same
cells bit for bit without touching the caller's global RNG."""

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from test_backbone import make_model
from test_prepare import tiny_spec

from scfate.data.datamodule import PerturbationDataModule
from scfate.errors import DataError, ScfateError, UsageError
from scfate.models.export import export_backbone
from scfate.models.flow_export import export_flow
from scfate.models.flow_head import FlowHead


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """An untrained (random) tiny flow head on two contexts, loaded through scfate.load, and 6 control cells."""
    import scfate

    tmp = tmp_path_factory.mktemp("api")
    dm = PerturbationDataModule(tiny_spec(tmp), tmp / "data", batch_size=16, steps_per_epoch=10, val_steps=2,
                                seed=0, val_mode="heldout_cells")
    dm.prepare_data()
    dm.setup("fit")
    backbone = make_model(dm).eval()
    bb = export_backbone(backbone, dm.data, tmp / "backbones" / "tiny" / "backbone.pt")
    feats = torch.as_tensor(dm.data.features.matrix, dtype=torch.float32)
    torch.manual_seed(0)
    head = FlowHead(backbone, feats, torch.zeros(len(dm.perturbations), backbone.hparams.theta_dim),
                    len(dm.contexts), d_embed=8, d_hidden=16, n_blocks=1, n_steps=3, source_std=0.5)
    path = export_flow(head, dm.data, tmp / "flow_heads" / "tiny" / "seed1" / "flow_best.pt", bb,
                       {"prior": "none", "krr_gamma": None, "krr_alpha": None})
    model = scfate.load(path)
    X = dm.reader(dm.controls["c1"][:6])
    ctrl = ad.AnnData(X, obs=pd.DataFrame(index=[f"ctrl{i}" for i in range(6)]), var=pd.DataFrame(index=model.genes))
    return SimpleNamespace(model=model, ctrl=ctrl, path=path)


def _with(ctrl, X=None, **obs):
    out = ctrl.copy()
    if X is not None:
        out.X = X
    for k, v in obs.items():
        out.obs[k] = v
    return out


def test_same_seed_same_cells_bit_for_bit_and_the_global_rng_untouched(api):
    m, ctrl = api.model, api.ctrl
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = m.predict(ctrl, ["A", "B+C"], n_cells=8, context="c1", seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG did not move
    torch.manual_seed(99)  # another global state: no influence on the prediction
    b = m.predict(ctrl, ["A", "B+C"], n_cells=8, context="c1", seed=7)
    assert np.array_equal(a.X, b.X) and list(a.obs["control_cell"]) == list(b.obs["control_cell"])
    c = m.predict(ctrl, ["A", "B+C"], n_cells=8, context="c1", seed=8)
    assert not np.array_equal(a.X, c.X)


@pytest.mark.parametrize("bad,msg", [
    (np.nan, r"adata_ctrl has 1 NaN/Inf values.*log1p-normalised values \(sc.pp.normalize_total"),
    (np.inf, r"adata_ctrl has 1 NaN/Inf values"),
    (-0.5, r"adata_ctrl has negative values \(min -0.5\): it looks scaled or z-scored. Provide log1p"),
    (100.5, r"adata_ctrl has non-integer values with max 100: normalised but apparently not log-transformed. "
            r"Normalise them as prepare does: sc.pp.normalize_total"),
])
def test_values_prepare_rejects_are_rejected(api, bad, msg):
    X = api.ctrl.X.copy()
    X[2, 3] = bad
    with pytest.raises(DataError, match=msg):
        api.model.predict(_with(api.ctrl, X), ["A"], n_cells=4, context="c1")


def test_raw_counts_are_refused_with_the_normalisation_to_apply(api):
    counts = np.expm1(api.ctrl.X).round().astype(np.float32)  # whole numbers, as a counts matrix
    with pytest.raises(DataError, match=r"adata_ctrl looks like raw counts.*sc.pp.normalize_total\(adata, "
                                        r"target_sum=1e4\); sc.pp.log1p\(adata\)"):
        api.model.predict(_with(api.ctrl, counts), ["A"], n_cells=4, context="c1")


def test_control_cells_of_another_context_or_perturbed_cells_are_refused(api):
    m, ctrl = api.model, api.ctrl
    mixed = _with(ctrl, cell_type=["c1"] * 4 + ["c2"] * 2)
    with pytest.raises(DataError, match=r"2 cells of another context than context='c1': obs\['cell_type'\] "
                                        r"counts \{'c2': 2\}.*adata_ctrl\[adata_ctrl.obs\['cell_type'\] == 'c1'\]"):
        m.predict(mixed, ["A"], n_cells=4, context="c1")
    with pytest.raises(DataError, match=r"pass context=NAME. adata_ctrl.obs says \{'cell_type': \['c1', 'c2'\]\}"):
        m.predict(mixed, ["A"], n_cells=4)
    # labelled with the right context (and the prepared data's columns): accepted
    ok = _with(ctrl, cell_type=["c1"] * 6, scfate_context=["c1"] * 6, scfate_is_control=[True] * 6)
    assert m.predict(ok, ["A"], n_cells=4, context="c1").n_obs == 4
    with pytest.raises(DataError, match=r"1 perturbed cells \(obs\['scfate_is_control'\] is False\)"):
        m.predict(_with(ctrl, scfate_is_control=[True] * 5 + [False]), ["A"], n_cells=4, context="c1")


@pytest.mark.parametrize("perts,msg", [
    ("", r"Perturbation '' names no gene: give a gene name or several joined by \+"),
    ("+", r"Perturbation '\+' names no gene"),
    ([" "], r"Perturbation ' ' names no gene"),
    ([], r"perturbations is empty: give at least one name"),
    (["control"], r"'control' is the control condition, not a perturbation: the control cells are adata_ctrl"),
    (["A", "ctrl+CTRL"], r"'ctrl\+CTRL' is the control condition"),
    ([None], r"Perturbation None is a NoneType, not a name: give gene names as str"),
    (5, r"perturbations=5: give a list of perturbation names \(or one name as a str\)"),
])
def test_perturbations_that_name_nothing_are_refused(api, perts, msg):
    with pytest.raises(UsageError, match=msg):
        api.model.predict(api.ctrl, perts, n_cells=4, context="c1")


def test_one_name_as_a_str_is_one_perturbation_and_gears_labels_are_canonical(api):
    m, ctrl = api.model, api.ctrl
    one = m.predict(ctrl, "B+A", n_cells=4, context="c1", seed=2)
    listed = m.predict(ctrl, ["A+B"], n_cells=4, context="c1", seed=2)
    assert list(one.obs["perturbation"].unique()) == ["A+B"] and np.array_equal(one.X, listed.X)
    gears = m.predict(ctrl, ["A+ctrl"], n_cells=4, context="c1", seed=2)  # as prepare reads GEARS labels
    assert np.array_equal(gears.X, m.predict(ctrl, ["A"], n_cells=4, context="c1", seed=2).X)


@pytest.mark.parametrize("kw,msg", [
    ({"n_cells": 0}, r"n_cells=0: must be an integer >= 1, e.g. n_cells=500"),
    ({"n_cells": -3}, r"n_cells=-3: must be an integer >= 1"),
    ({"n_cells": 10.0}, r"n_cells=10.0: must be an integer >= 1"),
    ({"n_cells": "10"}, r"n_cells='10': must be an integer >= 1"),
    ({"n_cells": True}, r"n_cells=True: must be an integer"),
    ({"seed": -1}, r"seed=-1: must be an integer >= 0"),
    ({"seed": 1.5}, r"seed=1.5: must be an integer >= 0"),
    ({"n_steps": 0}, r"n_steps=0: the number of flow integration steps must be an integer >= 1 \(or None for "
                     r"the head's own, 3\)"),
    ({"n_steps": 2.5}, r"n_steps=2.5: the number of flow integration steps"),
    ({"dose": 10.0}, r"dose=10.0: this model predicts gene perturbations, which have no dose"),
])
def test_bad_counts_steps_seed_and_dose_are_refused(api, kw, msg):
    with pytest.raises(UsageError, match=msg):
        api.model.predict(api.ctrl, ["A"], **{"n_cells": 4, "context": "c1", **kw})


def test_no_control_cells_or_no_anndata_is_refused(api):
    m = api.model
    with pytest.raises(DataError, match=r"adata_ctrl has no cells: give the control cells"):
        m.predict(api.ctrl[:0].copy(), ["A"], n_cells=4, context="c1")
    with pytest.raises(UsageError, match=r"adata_ctrl is a ndarray: give an AnnData of control cells"):
        m.predict(api.ctrl.X, ["A"], n_cells=4, context="c1")
    dup = api.ctrl.copy()
    dup.var_names = [dup.var_names[1]] + list(dup.var_names[1:])
    with pytest.raises(DataError, match=r"duplicate gene name"):
        m.predict(dup, ["A"], n_cells=4, context="c1")


def test_every_refusal_is_a_scfate_error_before_any_prediction(api, monkeypatch):
    """A bad name late in the list fails before the first perturbation is predicted (no wasted work)."""
    from scfate.models.predictor import FlowPredictor

    calls = []
    monkeypatch.setattr(FlowPredictor, "predict", lambda self, *a: calls.append(a))
    with pytest.raises(ScfateError):
        api.model.predict(api.ctrl, ["A", "B", "control"], n_cells=4, context="c1")
    assert calls == []


def test_a_drug_model_needs_a_positive_dose(api):
    """A drug model that conditions on the dose: no dose would silently predict at dose 1 (log10 = 0)."""
    import copy

    drug = copy.copy(api.model)  # the fixture's model, seen as a drug model (checked before any prediction)
    drug.drug, drug.ckpt = True, {**api.model.ckpt, "use_dose": True}
    with pytest.raises(UsageError, match=r"This drug model conditions on the dose: pass dose=VALUE"):
        drug.predict(api.ctrl, ["A"], n_cells=4, context="c1")
    for bad in (0, -1.0, float("nan"), "10", True):
        with pytest.raises(UsageError, match=r"a dose must be a number > 0"):
            drug.predict(api.ctrl, ["A"], n_cells=4, context="c1", dose=bad)
