"""How many predictions leave the sentiment scale [-3, 3], and what clipping them gains.

Reads the raw predictions recorded in trial checkpoints (``predictions.npz``: the model's outputs
as trained) and scores them raw and clipped to [-3, 3], per checkpoint and split. Clipping can
never raise an absolute error for a label inside the scale; this measures by how much it lowers
MAE on real runs, which decided that msatune serves and scores clipped predictions
(:mod:`msatune.label_range`).

    python benchmarks/label_range.py CKPT_DIR [CKPT_DIR ...]         # checkpoint directories
    python benchmarks/label_range.py --study WS NAME                   # every checkpoint of a study
    python benchmarks/label_range.py --train-runs 'DIR/run-*'          # msatune train --out dirs

Writes benchmarks/results/label_range.json (or --out) with the machine's load average.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import base_doc, fmt, print_table, result_path, write_json  # noqa: E402


def score(ckpt: Path) -> list[dict[str, Any]]:
    from msatune.label_range import clip_predictions, outside_range
    from msatune.models.checkpoint import read_predictions

    rows = []
    arrays = read_predictions(ckpt, ("valid",), clip=False)
    splits = ["valid"]
    try:
        arrays.update(read_predictions(ckpt, ("test",), clip=False))
        splits.append("test")
    except Exception:  # noqa: BLE001 - a pruned trial's checkpoint has valid only
        pass
    for split in splits:
        p = arrays[f"{split}_pred"].astype(np.float64)
        y = arrays[f"{split}_label"].astype(np.float64)
        raw = float(np.mean(np.abs(p - y)))
        clipped = float(np.mean(np.abs(clip_predictions(p) - y)))
        rows.append({"checkpoint": str(ckpt), "split": split, "n": int(p.size), "outside": outside_range(p),
                     "min": float(p.min()), "max": float(p.max()), "raw_mae": raw, "clipped_mae": clipped,
                     "gain_pct": 100.0 * (raw - clipped) / raw if raw else 0.0})
    return rows


def study_checkpoints(ws: Path, name: str) -> list[Path]:
    import optuna

    url = f"sqlite:///{(ws / 'studies.db').resolve()}"
    study = optuna.load_study(study_name=name, storage=url)
    return [Path(t.user_attrs["checkpoint"]) for t in study.trials if t.user_attrs.get("checkpoint")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*", type=Path)
    ap.add_argument("--study", nargs=2, metavar=("WORKSPACE", "NAME"))
    ap.add_argument("--train-runs", default=None, help="glob of msatune train --out directories")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    ckpts = list(args.checkpoints)
    if args.study:
        ckpts += study_checkpoints(Path(args.study[0]), args.study[1])
    if args.train_runs:
        ckpts += [Path(d) / "checkpoint" for d in sorted(glob.glob(args.train_runs))
                  if (Path(d) / "checkpoint" / "predictions.npz").is_file()]
    if not ckpts:
        ap.error("no checkpoints given")
    rows = [r for c in ckpts for r in score(c)]
    shown = [{**r, "run": Path(r["checkpoint"]).parent.name} for r in rows]
    print_table(shown, [("run", "run", 0), ("split", "split", 0), ("n", "n", 0), ("outside", "outside", 0),
                        ("min", "min", 2), ("max", "max", 2), ("raw_mae", "raw MAE", 4),
                        ("clipped_mae", "clipped", 4), ("gain_pct", "gain %", 2)])
    doc = base_doc("label_range", "full", {})
    doc["rows"] = rows
    for split in ("valid", "test"):
        gains = [r["gain_pct"] for r in rows if r["split"] == split]
        if gains:
            doc[f"{split}_gain_pct"] = {"median": float(np.median(gains)), "max": float(np.max(gains)),
                                        "min": float(np.min(gains))}
            print(f"{split}: gain median {fmt(np.median(gains))}% (min {fmt(np.min(gains))}, "
                  f"max {fmt(np.max(gains))}) over {len(gains)} checkpoints")
    out = result_path("label_range", "full", args.out)
    write_json(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
