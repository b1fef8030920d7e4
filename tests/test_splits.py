import json

import pytest

from scfate.data import DataError, SplitSpec
from scfate.data.splits import load_split, make_split, save_split

GENES = [f"G{i:02d}" for i in range(20)]
PERTS = GENES + [f"{a}+{b}" for i, a in enumerate(GENES) for b in GENES[i + 1:] if (i + len(b)) % 3 == 0]


def _sim(seed=1, **kw):
    return make_split(PERTS, SplitSpec(seed=seed, test_gene_fraction=0.25, **kw))


def test_simulation_is_deterministic_per_seed():
    assert _sim(1).to_dict() == _sim(1).to_dict()
    assert _sim(1).test != _sim(2).test


def test_simulation_subgroups_follow_gears_definitions():
    s = _sim(2)
    held = set(s.params["test_genes"])
    assert len(held) == 5
    seen = lambda p: sum(g not in held for g in p.split("+"))  # noqa: E731
    groups = s.subgroups["test"]
    assert all("+" not in p and p in held for p in groups["unseen_single"])
    assert set(groups["unseen_single"]) == held
    for k in (0, 1):
        assert all("+" in p and seen(p) == k for p in groups[f"combo_seen{k}"])
        # every combo with k seen members is in the test set
        assert set(groups[f"combo_seen{k}"]) == {p for p in PERTS if "+" in p and seen(p) == k}
    assert all(seen(p) == 2 for p in groups["combo_seen2"]) and groups["combo_seen2"]
    assert sorted(p for g in groups.values() for p in g) == s.test


def test_no_leakage_and_val_from_training_perturbations():
    s = _sim(4)
    held = set(s.params["test_genes"])
    assert not set(s.train) & set(s.test) and not set(s.val) & set(s.test) and not set(s.train) & set(s.val)
    assert sorted(s.train + s.val + s.test) == sorted(PERTS)
    # a held-out gene never appears in training or validation, alone or in a pair
    assert not {g for p in s.train + s.val for g in p.split("+")} & held
    assert set(s.subgroups["val"]) == {"unseen_single", "combo_seen0", "combo_seen1", "combo_seen2"}


def test_unseen_perturbation_and_stratified_unseen_drug():
    s = make_split(PERTS, SplitSpec(mode="unseen_perturbation", seed=1, test_fraction=0.2, val_fraction=0.1))
    assert len(s.test) == round(0.2 * len(PERTS)) and s.val and not set(s.test) & set(s.train)
    drugs = [f"drug{i}" for i in range(24)]
    strata = {d: f"moa{i % 4}" for i, d in enumerate(drugs)}
    s = make_split(drugs, SplitSpec(mode="unseen_drug", seed=2, test_fraction=0.25, stratify_by="moa"), strata)
    assert sorted(strata[d] for d in s.test) == sorted(f"moa{i}" for i in range(4) for _ in range(2))
    assert s.subgroups["test"] == {"unseen_drug": s.test}


def test_save_load_round_trip_and_file_mode(tmp_path):
    s = _sim(5)
    path = save_split(s, tmp_path / "split.json")
    loaded = load_split(path, PERTS)
    assert loaded.to_dict() == s.to_dict()
    again = make_split(PERTS, SplitSpec(mode="file", file=str(path)))
    assert again.test == s.test


def test_bad_split_files(tmp_path):
    with pytest.raises(DataError, match="Split file not found"):
        load_split(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": PERTS[:-1] + ["ZZZ"], "val": [], "test": [PERTS[-1]]}))
    with pytest.raises(DataError, match=r"absent from the data: \['ZZZ'\]"):
        load_split(bad, PERTS)
    bad.write_text(json.dumps({"train": PERTS}))
    with pytest.raises(DataError, match=r"lacks key\(s\) \['val', 'test'\]"):
        load_split(bad, PERTS)


def test_empty_subgroup_is_a_clear_error():
    few_pairs = GENES[:12] + ["G00+G01", "G02+G03", "G04+G05"]
    spec = {"seed": 1, "test_gene_fraction": 0.2, "val_gene_fraction": 0.2}
    with pytest.raises(DataError, match=r"test subgroup\(s\) \['combo_seen1', 'combo_seen2'\] empty.*require_nonempty"):
        make_split(few_pairs, SplitSpec(**spec))
    # a subgroup the user does not require may be empty
    s = make_split(few_pairs, SplitSpec(**spec, require_nonempty=["unseen_single"]))
    assert s.subgroups["test"]["unseen_single"]
    with pytest.raises(DataError, match="leaves the test set empty"):
        make_split(GENES, SplitSpec(seed=1, test_gene_fraction=0.0, combo_seen2_test_fraction=0.0))
