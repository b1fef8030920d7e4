"""The cross-context benchmark: a perturbation held out in one context while trained in the others. Context units
in splits, folds that test each unit once, the ``other_contexts`` baseline, the mean selection that mimics the
test situation, and a tiny cross-context benchmark end to end with its leakage guard."""

import numpy as np
import pandas as pd
import pytest
import torch

from scfate.data import schema
from scfate.data.datamodule import condition_groups
from scfate.data.splits import Split, check_split, context_unit, parse_unit
from scfate.errors import DataError, UsageError
from scfate.eval.cv import context_fold_split, context_folds
from scfate.models.predictor import Condition, NotPredictable, Pseudobulk
from scfate.prior.baselines import make_baseline

PAIRS = [(c, p) for p in ("A", "B", "C", "D") for c in ("X", "Y", "Z")] + [("X", "E")]  # E: one context only


def test_each_context_unit_is_tested_once_per_repeat_and_never_with_its_other_contexts():
    folds = context_folds(PAIRS, n_folds=4, n_repeats=2, seed=3)
    units = sorted(context_unit(c, p) for c, p in PAIRS if p != "E")
    for r in (0, 1):
        tested = [u for f in folds if f["repeat"] == r for u in f["test"]]
        assert sorted(tested) == units  # E (a single context) is never a test unit
        for f in (f for f in folds if f["repeat"] == r):
            perts = [parse_unit(u)[1] for u in f["test"]]
            assert len(perts) == len(set(perts))  # its perturbation is trained in another context
        assert sorted(len(f["test"]) for f in folds if f["repeat"] == r) == [3, 3, 3, 3]
    with pytest.raises(UsageError, match="folds>=3"):
        context_folds(PAIRS, n_folds=2, n_repeats=1)
    with pytest.raises(UsageError, match="two or more contexts"):
        context_folds([("X", "A"), ("X", "B")], 2, 1)


def test_a_fold_split_keeps_every_held_out_perturbation_trained_elsewhere():
    test = ["X::A", "Y::B"]
    split = context_fold_split(PAIRS, test, val_fraction=0.3, seed=0)
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(context_unit(c, p) for c, p in PAIRS)
    trained = {parse_unit(u)[1] for u in split["train"]}
    assert {parse_unit(u)[1] for u in split["test"] + split["val"]} <= trained
    assert len(split["val"]) == 3 and not set(split["val"]) & set(test)
    assert split["subgroups"]["test"] == {"cross_context:X": ["X::A"], "cross_context:Y": ["Y::B"]}
    s = Split("file", 0, split["train"], split["val"], split["test"], split["subgroups"])
    check_split(s, ["A", "B", "C", "D", "E"], require_nonempty=[])  # context units cover their perturbations
    # a perturbation trained in every context while one of its units is tested shares cells: refused
    leaky = Split("file", 0, [*split["train"], "A"], split["val"], split["test"], split["subgroups"])
    with pytest.raises(DataError, match="in both train and (val|test)"):
        check_split(leaky, ["A", "B", "C", "D", "E"], require_nonempty=[])


def test_condition_groups_take_a_context_unit_in_its_context_only():
    obs = pd.DataFrame({schema.CONTEXT: ["X", "X", "Y", "Y", "Y"], schema.CONDITION: ["A", "B", "A", "A", "B"],
                        schema.PERT: ["A", "B", "A", "A", "B"]})
    groups = condition_groups(obs, {"Y::A", "B"})
    assert [(g.context, g.perturbation, list(g.cells)) for g in groups] == [
        ("X", "B", [1]), ("Y", "A", [2, 3]), ("Y", "B", [4])]


def cond(pert, ctx, f=0.0):
    return Condition(ctx, pert, pert, pert.split("+"), np.nan, np.array([f]))


def test_other_contexts_is_the_mean_of_the_same_perturbation_elsewhere():
    a_x, a_z, b_y = np.arange(4.0), np.ones(4), np.full(4, 5.0)
    pb = Pseudobulk("gene", ["X", "Y", "Z"], {c: np.zeros(4) for c in "XYZ"},
                    {"X": [(cond("A", "X"), a_x)], "Y": [(cond("B", "Y"), b_y)], "Z": [(cond("A", "Z"), a_z)]})
    b = make_baseline("other_contexts")
    b.fit(pb)
    np.testing.assert_allclose(b.predict_delta(cond("A", "Y"))[0], (a_x + a_z) / 2)
    np.testing.assert_allclose(b.predict_delta(cond("A", "X"))[0], a_z)  # its own context is never used
    with pytest.raises(NotPredictable, match="no context other than"):
        b.predict_delta(cond("B", "Y"))
    # centred: Y's mean training shift plus A's shift minus the mean training shift of each other context
    c = make_baseline("other_contexts_centred")
    c.fit(pb)
    np.testing.assert_allclose(c.predict_delta(cond("A", "Y"))[0], b_y + ((a_x - a_x) + (a_z - a_z)) / 2)
    pb.train["X"].append((cond("C", "X"), np.full(4, 3.0)))
    c.fit(pb)
    np.testing.assert_allclose(c.predict_delta(cond("A", "Y"))[0], b_y + ((a_x - (a_x + 3) / 2) + 0) / 2)


def test_mean_selection_sees_other_contexts_only_in_a_cross_context_fold():
    """Shifts that are the same in every context and unrelated to the features: with the other contexts'
    rows, leave-one-unit-out picks other_contexts (exact); without them (a perturbation fold) it cannot."""
    from scfate.prior.mean_select import CANDIDATES, CROSS_CONTEXT, select_mean

    rng = np.random.default_rng(0)
    shifts = {p: rng.normal(size=6) for p in "ABCDEF"}
    units = {p: i for i, p in enumerate(shifts)}
    unit_F = torch.as_tensor(rng.normal(size=(6, 3)), dtype=torch.float32)

    def c(p, ctx):
        return Condition(ctx, p, p, [p], np.nan, unit_F[units[p]].double().numpy())

    rows = [(c(p, "X"), shifts[p]) for p in shifts]
    others = {"Y": [(c(p, "Y"), shifts[p]) for p in shifts]}
    pb = Pseudobulk("gene", ["X"], {"X": np.zeros(6)}, {**others, "X": rows})
    cross = select_mean(pb, rows, unit_F, units, "rbf", CANDIDATES + CROSS_CONTEXT, others=others)
    assert cross["single"]["chosen"] == "other_contexts"
    assert cross["single"]["loo_cos"]["other_contexts"] == pytest.approx(1)
    plain = select_mean(Pseudobulk("gene", ["X"], {"X": np.zeros(6)}, {"X": rows}), rows, unit_F, units, "rbf",
                        CANDIDATES + CROSS_CONTEXT)
    assert plain["single"]["chosen"] not in CROSS_CONTEXT
    assert all(plain["single"]["loo_cos"][n] == -1.0 for n in CROSS_CONTEXT)  # not defined: never chosen


@pytest.fixture(scope="module")
def tiny_cross_bench(tmp_path_factory):
    from test_bench import run_tiny_bench

    return run_tiny_bench(tmp_path_factory.mktemp("cross"), "mode=cross_context", "folds=3")


def test_tiny_cross_context_benchmark_end_to_end_without_leaks(tiny_cross_bench):
    tmp, res = tiny_cross_bench
    assert res["mode"] == "cross_context"
    assert res["predictors"] == ["scfate", "flow_off", "train_mean", "additive", "knn", "other_contexts",
                                 "other_contexts_centred", "rotation_transfer"]
    scored = {r["unit"] for r in res["rows"] if r["predictor"] == "scfate"}
    assert scored == {u for f in res["folds_detail"] for u in f["test"]} and all("::" in u for u in scored)
    assert {g for g in res["summary"] if g != "overall"} <= {"cross_context:SYNCL1", "cross_context:SYNCL2"}
    # the zero-shot transfers are defined on every test unit (its perturbation was trained in the other context)
    for name in ("other_contexts", "other_contexts_centred", "rotation_transfer"):
        assert res["summary"]["overall"]["predictors"][name]["cos"]["n"] == len(scored)
    root = next((tmp / "artifacts" / "bench" / "synthetic").iterdir())
    for f in res["folds_detail"]:
        out = root / "folds" / f"r{f['repeat']}_f{f['fold']}"
        head = torch.load(out / "flow_best.pt", weights_only=True)
        bb = torch.load((out / head["backbone_path"]).resolve(), weights_only=True)
        assert not set(bb["split"]["train"]) & set(f["test"]) and not set(head["split"]["val"]) & set(f["test"])
        for u in f["test"]:  # its perturbation is in the atlas (trained elsewhere), its context unit is not
            assert parse_unit(u)[1] in bb["atlas_perturbations"]


def test_rotation_sum_decodes_the_members_summed_angles(tmp_path):
    from test_backbone import make_model, tiny_spec

    from scfate.data.datamodule import PerturbationDataModule
    from scfate.models.predictor import RotationSum

    dm = PerturbationDataModule(tiny_spec(tmp_path), tmp_path / "data", batch_size=16, steps_per_epoch=2,
                                val_steps=1, seed=0, val_mode="heldout_cells")
    dm.setup("fit")
    model = make_model(dm)
    singles = [p for p in dm.data.split.train if "+" not in p][:2]
    pair = Condition(dm.contexts[0], "+".join(sorted(singles)), "+".join(sorted(singles)), sorted(singles), np.nan,
                     np.zeros(1))
    x = dm.reader(dm.controls[dm.contexts[0]][:8])
    idx = {p: i for i, p in enumerate(model.hparams.perturbations)}
    theta = model.theta_bar(torch.tensor(idx[singles[0]])) + model.theta_bar(torch.tensor(idx[singles[1]]))
    with torch.no_grad():
        expected = model.transport(torch.as_tensor(x), torch.tensor(0), theta).double().numpy()
    pred = RotationSum(model, dm.contexts).predict(pair, x)
    np.testing.assert_allclose(pred.cells, expected, atol=1e-6)
    single = Condition(pair.context, singles[0], singles[0], [singles[0]], np.nan, np.zeros(1))
    with pytest.raises(NotPredictable, match="combination"):
        RotationSum(model, dm.contexts).predict(single, x)
    # many conditions at once, each on its own cells: one stacked transport, the same cells, the refusal in place
    other = Condition(dm.contexts[-1], pair.condition, pair.perturbation, pair.members, np.nan, np.zeros(1))
    xs = [x, x[:5], dm.reader(dm.controls[dm.contexts[-1]][:6]), x[2:]]
    many = RotationSum(model, dm.contexts).predict_each([pair, single, other, pair], xs)
    assert isinstance(many[1], NotPredictable)
    for got, c, xc in zip([many[0], many[2], many[3]], [pair, other, pair], [xs[0], xs[2], xs[3]]):
        np.testing.assert_allclose(got.cells, RotationSum(model, dm.contexts).predict(c, xc).cells, atol=1e-6)
        assert got.cells.shape == xc.shape


def test_interaction_cosine_scores_only_the_part_beyond_the_reference():
    from types import SimpleNamespace

    from scfate.eval.runner import _add_interaction

    key, single = ("c", "A+B"), ("c", "A")
    ed = SimpleNamespace(conditions={key: cond("A+B", "c"), single: cond("A", "c")})
    ref, true = np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 2.0])  # the truth is additive + (0, 0, 2)
    deltas = {"additive": {key: (ref, true), single: (ref, true)},
              "good": {key: (ref + [0, 0, 0.5], true)}, "bad": {key: (ref + [0, 0, -1.0], true)},
              "same": {key: (ref.copy(), true)}}
    entries = {n: {f"{k[0]}/{k[1]}": {"metrics": {}} for k in d} for n, d in deltas.items()}
    _add_interaction(ed, entries, deltas, "additive")
    assert entries["good"]["c/A+B"]["metrics"]["interaction_cos"] == pytest.approx(1.0)
    assert entries["bad"]["c/A+B"]["metrics"]["interaction_cos"] == pytest.approx(-1.0)
    assert "interaction_cos" not in entries["same"]["c/A+B"]["metrics"]  # no non-additive part predicted: undefined
    assert "interaction_cos" not in entries["additive"]["c/A"]["metrics"]
