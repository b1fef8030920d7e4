"""Quality on the built-in synthetic data (slow: the full default run, ~1.5 min; CI runs it in `pytest -m slow`).

Two default runs (seed 1) measured on the 62 held-out test conditions: DA 0.872 / 0.844, cos 0.547 / 0.475,
PDE 0.832 / 0.848, against train_mean 0.850 / 0.532 / 0.703 and no_change 0.000 / undefined / undefined (CPU float
reductions are not bit-reproducible across runs, and the margins below are what survives that spread). The model
beats no_change clearly and train_mean on PDE clearly; it does NOT clearly beat train_mean on DA or cos yet, so
those are not asserted (the flow-head issue stays open on this point).
"""

import json

import pytest
from test_entrypoints import run


@pytest.mark.slow
def test_default_run_beats_no_change_and_train_mean_on_pde(tmp_path):
    run(["train.py", "seed=1", f"paths.artifacts_dir={tmp_path / 'artifacts'}"], tmp_path)
    ev = json.loads((tmp_path / "artifacts" / "flow_heads" / "synthetic" / "seed1" / "eval_synthetic_seed1.json")
                    .read_text())
    model = {k: ev["metrics"]["overall"][k]["mean"] for k in ("da", "cos", "pde")}
    mean = {k: ev["baselines"]["train_mean"]["overall"][k]["mean"] for k in ("da", "cos", "pde")}
    no_change = ev["baselines"]["no_change"]["overall"]
    assert model["da"] > no_change["da"]["mean"] + 0.5 and no_change["cos"]["mean"] is None
    assert model["cos"] > 0.3 and model["pde"] > 0.5, model  # defined and clearly positive, unlike no_change
    assert model["pde"] > mean["pde"] + 0.05, (model, mean)
