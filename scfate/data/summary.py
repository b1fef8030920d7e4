"""A dataset summary: cells, genes, contexts, features, and perturbations / cells per split subgroup."""

from __future__ import annotations

from collections import Counter

from scfate.data import schema
from scfate.data.splits import UNIT_SEP


def summarise(data) -> dict:
    """Plain-dict summary of a `PreparedData` (JSON-serialisable, also printed by the CLI)."""
    obs = data.adata.obs
    # cells per split entry: a perturbation (all contexts) or a context unit CONTEXT::PERTURBATION
    keys = obs[[schema.CONTEXT, schema.PERT]].astype(str)
    cells_per_pert = Counter(keys[schema.PERT]) + Counter(keys[schema.CONTEXT] + UNIT_SEP + keys[schema.PERT])
    meta, split = data.meta, data.split
    rows = []
    for set_name in ("train", "val", "test"):
        perts = getattr(split, set_name)
        rows.append({"set": set_name, "subgroup": "all", "perturbations": len(perts),
                     "cells": sum(cells_per_pert[p] for p in perts)})
        for group, members in split.subgroups.get(set_name, {}).items():
            rows.append({"set": set_name, "subgroup": group, "perturbations": len(members),
                         "cells": sum(cells_per_pert[p] for p in members)})
    n_combo = sum("+" in p for p in meta["perturbations"]) if data.spec.perturbation_type == "gene" else 0
    return {
        "dataset": meta["dataset"], "source": meta["source"], "data_sha256": meta["data_sha256"],
        "input_type": meta["input_type"], "cells": meta["n_cells"], "control_cells": meta["n_control_cells"],
        "genes": meta["n_genes"], "contexts": meta["contexts"],
        "perturbations": len(meta["perturbations"]), "combinations": n_combo,
        "measured_perturbed_genes": sorted(meta["measured_perturbed_genes"]),
        "feature_dim": int(data.features.matrix.shape[1]),
        "feature_views": {v["name"]: v["stop"] - v["start"] for v in data.features.views},
        # the tag, not a hash of the settings: the same name as the backbone folder of this split
        "split": {"mode": split.mode, "seed": split.seed, "tag": split.tag, "file": str(data.split_path),
                  "rows": rows},
        "cache_dir": str(data.cache_dir),
    }


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(title=f"scFATE dataset: {summary['dataset']}", show_header=False)
    for key in ("source", "input_type", "cells", "control_cells", "genes", "contexts", "perturbations",
                "combinations", "measured_perturbed_genes", "feature_dim", "feature_views", "cache_dir"):
        value = summary[key]
        head.add_row(key, ", ".join(map(str, value)) if isinstance(value, list) else str(value))
    head.add_row("data_sha256", summary["data_sha256"][:16] + "…")
    console.print(head)
    sp = summary["split"]
    table = Table(title=f"split {sp.get('tag') or sp['mode']}: {sp['mode']} (seed {sp['seed']})")
    for col in ("set", "subgroup", "perturbations", "cells"):
        table.add_column(col, justify="right" if col in ("perturbations", "cells") else "left")
    for r in sp["rows"]:
        table.add_row(r["set"], r["subgroup"], str(r["perturbations"]), str(r["cells"]))
    console.print(table)
    console.print(f"split saved to {sp['file']}", soft_wrap=True)


def write_summary(data, out_dir, resolved_config: dict | None = None) -> dict:
    """Print the summary of ``data`` and write it (and the resolved config) into ``out_dir``; return it."""
    from pathlib import Path

    import yaml

    from scfate.utils.io import atomic_write_json, atomic_write_text

    summary = summarise(data)
    print_summary(summary)
    out = Path(out_dir)
    atomic_write_json(out / "data_summary.json", summary)
    if resolved_config is not None:
        atomic_write_text(out / "resolved_config.yaml", yaml.safe_dump(resolved_config, sort_keys=False))
    return summary
