"""Quality on the built-in synthetic data (slow: the full default run, ~1.5 min; CI runs it in `pytest -m slow`).

Measured with the default config, seed 1 (see the closing notes of the flow-head issue): on the 62 held-out test
conditions the model reaches DA 0.872 / cos 0.547 / PDE 0.832 against train_mean 0.850 / 0.532 / 0.703 and
no_change 0.000 / undefined / undefined. The assertions below hold those margins where they are clear (DA and PDE);
cos is only required not to fall below train_mean: the issue's "clear margin" on cos is NOT met yet.
"""

import json

import pytest
from test_entrypoints import run


@pytest.mark.slow
def test_default_run_beats_no_change_and_train_mean_zero_shot(tmp_path):
    run(["train.py", "seed=1", f"paths.artifacts_dir={tmp_path / 'artifacts'}"], tmp_path)
    ev = json.loads((tmp_path / "artifacts" / "flow_heads" / "synthetic" / "seed1" / "eval_synthetic_seed1.json")
                    .read_text())
    model = {k: ev["metrics"]["overall"][k]["mean"] for k in ("da", "cos", "pde")}
    mean = {k: ev["baselines"]["train_mean"]["overall"][k]["mean"] for k in ("da", "cos", "pde")}
    no_change = ev["baselines"]["no_change"]["overall"]
    assert model["da"] > no_change["da"]["mean"] + 0.5 and no_change["cos"]["mean"] is None
    assert model["da"] > mean["da"] + 0.01, (model, mean)
    assert model["pde"] > mean["pde"] + 0.05, (model, mean)
    assert model["cos"] >= mean["cos"], (model, mean)
