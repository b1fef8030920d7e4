"""Table 1 from eval JSONs: aggregation over seeds, missing cells named (never invented), baselines, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from scfate.eval.report import collect, table1, to_latex, to_markdown

PROJECT_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
ABSENT = object()  # metric key left out entirely (as opposed to mean null)


def _results(means: dict, subgroup_means: dict | None = None) -> dict:
    def block(ms):
        return {m: {"mean": v, "sd": 0.1 if v is not None else None, "n": 9, "n_undefined": 0 if v is not None else 9}
                for m, v in ms.items() if v is not ABSENT}
    return {"overall": block(means), "by_subgroup": {g: block(ms) for g, ms in (subgroup_means or {}).items()},
            "per_perturbation": {}}


def make_eval(model="scfate", dataset="toy", seed=1, means=None, baselines=None, subgroups=None,
              schema_version=1, time="2026-01-01T00:00:00+00:00", split_seed=None) -> dict:
    """A minimal but valid eval JSON with the chosen per-JSON means (split seed = seed unless given)."""
    split_seed = seed if split_seed is None else split_seed
    return {"schema_version": schema_version, "model": model, "dataset": dataset,
            "split": {"mode": "simulation", "seed": split_seed, "file": f"splits/simulation_seed{split_seed}.json",
                      "test": [], "subgroups": {}, "test_perturbations_without_cells": []},
            "seed": seed, "split_seed": split_seed, "metrics": _results(means or {}, subgroups),
            "baselines": {k: _results(v) for k, v in (baselines or {}).items()},
            "provenance": {"time": time}}


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def row(table, model, dataset="toy"):
    (r,) = [r for r in table["rows"] if r["model"] == model and r["dataset"] == dataset]
    return r


def test_mean_sd_over_three_seeds(tmp_path):
    da = [0.8, 0.7, 0.9]
    for s, v in enumerate(da, 1):
        write(tmp_path / f"run{s}" / f"eval_seed{s}.json", make_eval(seed=s, means={"da": v, "cos": 0.5}))
    t = table1([tmp_path], metrics=("da", "cos"), include_baselines=False)
    cell = row(t, "scfate")["cells"]["da"]
    assert cell["n"] == 3 and cell["missing_in"] == []
    assert cell["mean"] == pytest.approx(np.mean(da))
    assert cell["sd"] == pytest.approx(np.std(da, ddof=1))
    assert row(t, "scfate")["cells"]["cos"]["sd"] == pytest.approx(0.0)
    assert f"{np.mean(da):.3f} ± {np.std(da, ddof=1):.3f} (n=3)" in to_markdown(t)


def test_three_training_seeds_on_one_split_are_three_runs(tmp_path):
    """The card's seed{1,2,3} heads share one split: n=3 (one run per training seed), not one seed that disagrees;
    an eval JSON written before split_seed existed (seed = split seed) still reads as its own run."""
    da = [0.8, 0.7, 0.9]
    for s, v in enumerate(da, 1):
        write(tmp_path / f"seed{s}" / "eval.json", make_eval(seed=s, split_seed=1, means={"da": v},
                                                            baselines={"additive": {"da": 0.75}}))
    t = table1([tmp_path], metrics=("da",))
    assert not t["notes"]
    cell = row(t, "scfate")["cells"]["da"]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(0.8) and cell["sd"] == pytest.approx(0.1)
    assert cell["seeds"] == [1, "split1/seed2", "split1/seed3"]
    assert row(t, "baseline:additive")["cells"]["da"]["n"] == 3
    old = make_eval(seed=4, means={"da": 0.6})
    del old["split_seed"]
    write(tmp_path / "old" / "eval.json", old)
    assert row(table1([tmp_path], metrics=("da",)), "scfate")["cells"]["da"]["n"] == 4


def test_single_seed_has_no_sd(tmp_path):
    write(tmp_path / "e.json", make_eval(means={"da": 0.8}))
    cell = row(table1([tmp_path / "e.json"], metrics=("da",)), "scfate")["cells"]["da"]
    assert cell["n"] == 1 and cell["sd"] is None


def test_metric_missing_in_one_seed(tmp_path):
    write(tmp_path / "a.json", make_eval(seed=1, means={"da": 0.8, "pde": 0.6}))
    write(tmp_path / "b.json", make_eval(seed=2, means={"da": 0.6, "pde": None}))  # mean null
    write(tmp_path / "c.json", make_eval(seed=3, means={"da": 0.7, "pde": 0.4}))
    cell = row(table1([tmp_path], metrics=("da", "pde")), "scfate")["cells"]["pde"]
    assert cell["n"] == 2 and cell["missing_in"] == ["b.json"]
    assert cell["mean"] == pytest.approx(0.5) and cell["sd"] == pytest.approx(np.std([0.6, 0.4], ddof=1))
    assert "0.500 ± 0.141 (n=2; missing in: b.json)" in to_markdown(table1([tmp_path], metrics=("pde",)))


def test_metric_missing_everywhere_is_not_invented(tmp_path):
    write(tmp_path / "a.json", make_eval(seed=1, means={"da": 0.8, "cos": ABSENT}))
    write(tmp_path / "b.json", make_eval(seed=2, means={"da": 0.6, "cos": None}))
    t = table1([tmp_path], metrics=("da", "cos"))
    cell = row(t, "scfate")["cells"]["cos"]
    assert cell["n"] == 0 and cell["mean"] is None and cell["sd"] is None
    assert "missing (looked in: a.json, b.json)" in to_markdown(t)


def test_baselines_are_rows_and_deduplicated_per_seed(tmp_path):
    base = {"no_change": {"da": 0.0}, "linear": {"da": 0.6}}
    write(tmp_path / "m1.json", make_eval(model="scfate", seed=1, means={"da": 0.8}, baselines=base))
    write(tmp_path / "m2.json", make_eval(model="other", seed=1, means={"da": 0.7}, baselines=base))
    write(tmp_path / "m3.json", make_eval(model="scfate", seed=2, means={"da": 0.9},
                                          baselines={"no_change": {"da": 0.0}, "linear": {"da": 0.8}}))
    t = table1([tmp_path], metrics=("da",))
    assert [r["model"] for r in t["rows"]] == ["other", "scfate", "baseline:linear", "baseline:no_change"]
    lin = row(t, "baseline:linear")["cells"]["da"]
    assert lin["n"] == 2 and lin["mean"] == pytest.approx(0.7)  # seed 1 counted once, not twice
    assert row(t, "baseline:linear")["sources"] == ["m1.json", "m2.json", "m3.json"]
    assert t["notes"] == []
    assert [r["model"] for r in table1([tmp_path], include_baselines=False)["rows"]] == ["other", "scfate"]


def test_disagreeing_runs_of_one_seed_are_flagged(tmp_path):
    write(tmp_path / "old.json", make_eval(seed=1, means={"da": 0.5}, time="2026-01-01T00:00:00+00:00"))
    write(tmp_path / "new.json", make_eval(seed=1, means={"da": 0.6}, time="2026-01-02T00:00:00+00:00"))
    t = table1([tmp_path], metrics=("da",))
    cell = row(t, "scfate")["cells"]["da"]
    assert cell["n"] == 1 and cell["mean"] == pytest.approx(0.6) and cell["files"] == ["new.json"]
    assert len(t["notes"]) == 1 and "disagree" in t["notes"][0] and "old.json" in t["notes"][0]


def test_own_model_run_preferred_over_embedded_baseline(tmp_path):
    # a predictor evaluated as the JSON's model wins over the same predictor scored as another run's baseline
    write(tmp_path / "lin.json", make_eval(model="baseline:linear", means={"da": 0.7}, time="2026-01-01T00:00:00"))
    write(tmp_path / "add.json", make_eval(model="baseline:additive", means={"da": 0.8},
                                           baselines={"linear": {"da": 0.68}}, time="2026-01-02T00:00:00"))
    t = table1([tmp_path], metrics=("da",))
    assert row(t, "baseline:linear")["cells"]["da"]["files"] == ["lin.json"]
    assert "add.json" in t["notes"][0]


def test_subgroup_table(tmp_path):
    write(tmp_path / "a.json", make_eval(means={"da": 0.8}, subgroups={"combo_seen1": {"da": 0.3}}))
    t = table1([tmp_path], metrics=("da",), subgroup="combo_seen1")
    assert row(t, "scfate")["cells"]["da"]["mean"] == pytest.approx(0.3)
    t = table1([tmp_path], metrics=("da",), subgroup="combo_seen2")
    assert row(t, "scfate")["cells"]["da"]["n"] == 0


def test_markdown_and_latex(tmp_path):
    write(tmp_path / "eval_my_model.json", make_eval(model="my_model", dataset="norman_devel",
                                                     means={"da": 0.8, "pds_normalized": 0.25},
                                                     baselines={"no_change": {"da": 0.0}}))
    t = table1([tmp_path], metrics=("da", "pds_normalized"))
    md = to_markdown(t)
    assert "| dataset | split | model | da | pds_normalized |" in md
    assert "| norman_devel | simulation | my_model | 0.800 (n=1) | 0.250 (n=1) |" in md
    tex = to_latex(t)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"norman\_devel & simulation & my\_model & 0.800 (n=1) & 0.250 (n=1) \\" in tex
    assert r"pds\_normalized" in tex and r"baseline:no\_change" in tex
    assert r"missing (looked in: eval\_my\_model.json)" in tex
    body = tex.split(r"\toprule")[1].split(r"\bottomrule")[0]
    assert "_" not in body.replace(r"\_", "")


def test_latex_pm_in_math_mode(tmp_path):
    for s, v in ((1, 0.8), (2, 0.6)):
        write(tmp_path / f"s{s}.json", make_eval(seed=s, means={"da": v}))
    assert r"0.700 $\pm$ 0.141 (n=2)" in to_latex(table1([tmp_path], metrics=("da",)))


def test_wrong_schema_version_names_the_file(tmp_path):
    write(tmp_path / "ok.json", make_eval())
    bad = write(tmp_path / "sub" / "bad_eval.json", make_eval(schema_version=99))
    with pytest.raises(ValueError, match="bad_eval.json"):
        collect([tmp_path])
    with pytest.raises(ValueError, match=str(bad)):
        table1([bad])


def test_other_jsons_are_skipped(tmp_path):
    write(tmp_path / "config.json", {"lr": 1e-3})
    (tmp_path / "broken.json").write_text("{not json")
    write(tmp_path / "e.json", make_eval(means={"da": 0.8}))
    assert {r.path.name for r in collect([tmp_path])} == {"e.json"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "scfate.report", *map(str, args)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_both_formats_and_out(tmp_path):
    write(tmp_path / "runs" / "a.json", make_eval(seed=1, means={"da": 0.8, "cos": 0.5, "pde": 0.4}))
    write(tmp_path / "runs" / "b.json", make_eval(seed=2, means={"da": 0.6, "cos": 0.5, "pde": 0.4}))
    proc = _cli("table1", tmp_path / "runs", "--format", "both", "--out", tmp_path / "t1.txt")
    assert proc.returncode == 0, proc.stderr
    assert "| toy | simulation | scfate | 0.700 ± 0.141 (n=2) |" in proc.stdout
    assert r"\begin{tabular}" in proc.stdout and r"0.700 $\pm$ 0.141 (n=2)" in proc.stdout
    assert (tmp_path / "t1.txt").read_text() == proc.stdout


def test_cli_empty_dir_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = _cli("table1", tmp_path / "empty")
    assert proc.returncode == 2 and "no eval JSON found" in proc.stderr and str(tmp_path / "empty") in proc.stderr


def test_cli_wrong_schema_exits_2(tmp_path):
    write(tmp_path / "bad.json", make_eval(schema_version=2))
    proc = _cli("table1", tmp_path)
    assert proc.returncode == 2 and "bad.json" in proc.stderr
