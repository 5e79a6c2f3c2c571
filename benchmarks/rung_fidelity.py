"""Rung fidelity: do early epochs rank configurations the way their final results do?

ASHA compares trials at a rung (an early epoch) and keeps the best third. That is only worth
something if the rung signal ranks configurations like their final best validation MAE. This
benchmark trains configurations sampled from msatune's default search space to the full epoch
budget (no pruning; the recipe's own early stopping stays on, as in a study), records every
epoch's validation MAE, and reports, for each candidate rung signal, the Spearman rank
correlation with the final best validation MAE and the share of the 5 best final configurations
that a cut to the best third at that signal would have pruned.

Candidate signals, at rung r (epochs 1, 2, 3, 5, 9, 15 as far as the budget allows):
  ``current@r``  validation MAE at epoch r (what ASHA compared until now)
  ``best@r``     best validation MAE over epochs 1..r (best so far)
  ``steps@r``    best so far after the optimizer steps a batch-16 run makes in r epochs (a trial
                 with batch b is read at epoch ceil(r * 16 / b)), i.e. rungs by optimizer steps
  ``train@r``    training MAE of epoch r (over the whole training split, in training mode)
  ``mean@r``     the mean of ``best@r`` and ``train@r`` (msatune's ASHA signal from issue 14 to 22)
  ``rung@r``     msatune's ASHA signal (``search.trainable.rung_score``), chosen from these
                 measurements on three structures: ``train@r`` through epoch 3, then more and
                 more of ``best@r``, up to ``mean@r`` from epoch 9
A trial that stopped early keeps its last values for later rungs.

    python benchmarks/rung_fidelity.py                         # 32 configs x 27 epochs, synthetic mosi
    python benchmarks/rung_fidelity.py --cosine-epochs 50      # every config on the improved preset's 50-epoch cosine
    python benchmarks/rung_fidelity.py --quick                 # 8 configs x 9 epochs
    python benchmarks/rung_fidelity.py --data DIR              # any msa-tf2 directory (recorded)
    python benchmarks/rung_fidelity.py --synth lexicon         # a synthetic set of another structure
    python benchmarks/rung_fidelity.py --smoke --out /tmp/r.json   # tiny data (tests)

Two processes train side by side (one TensorFlow thread each). Never asserts anything.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import (  # noqa: E402
    add_data_args,
    base_doc,
    data_tag,
    loadavg,
    mode_of,
    print_table,
    resolve_data,
    result_path,
    write_json,
)

from msatune.search.trainable import rung_score  # noqa: E402

SIZES = {
    "full": {"configs": 32, "epochs": 27, "data": "mosi"},
    "quick": {"configs": 8, "epochs": 9, "data": "mosi"},
    "smoke": {"configs": 4, "epochs": 3, "data": "tiny"},
}
RUNGS = (1, 2, 3, 5, 9, 15)
REFERENCE_BATCH = 16
KINDS = ("current", "best", "steps", "train", "mean", "rung")
TOP = 5
KEEP = 1 / 3  # ASHA's reduction factor 3 keeps the best third at a rung

_DATA: dict[str, Any] = {}


def sample_configs(n: int, epochs: int, seed: int, cosine_epochs: int | None,
                   first_rung: int | None) -> list[dict[str, Any]]:
    """``n`` configurations from msatune's default space (Optuna's random sampler, seeded)."""
    import optuna

    from msatune.search.space import default_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # first_rung: the space as a study with that first ASHA rung gets it (warm-ups end before it)
    space = default_space(epochs, seed) if first_rung is None else default_space(epochs, seed, first_rung)
    if cosine_epochs is not None:  # the cosine horizon of every config (0: the trial's epochs)
        space.base["cosine_epochs"] = int(cosine_epochs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(space.sample(trial))
        study.tell(trial, 0.0)
    return configs


def _train(args: tuple[int, dict[str, Any], str]) -> dict[str, Any]:
    """One configuration, to its end, in a pool process (one TF thread)."""
    index, config, data_path = args
    import tensorflow as tf

    if "threads" not in _DATA:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        _DATA["threads"] = True
    import keras

    from msatune.augment.dataset import load_dataset
    from msatune.search.trial import run_trial

    data = _DATA.setdefault(data_path, load_dataset(data_path))
    keras.backend.clear_session()
    t0 = time.perf_counter()
    trial_config = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        outcome = run_trial(trial_config, data)
        history = [{"val_mae": h["val_mae"], "train_mae": h["mae"], "lr": h["learning_rate"]}
                   for h in outcome.result.history]
        error = None
    except Exception as exc:  # noqa: BLE001 - a diverged configuration is data too
        history, error = [], f"{type(exc).__name__}: {exc}"[:300]
    n_train = data.splits["train"].n
    return {"index": index, "config": trial_config, "history": history, "error": error,
            "steps_per_epoch": n_train // int(trial_config["batch_size"]),
            "seconds": round(time.perf_counter() - t0, 2), "pid": os.getpid()}


# --- signals and statistics ------------------------------------------------------------------


def _at(values: list[float], epoch: int) -> float:
    """The value at 1-based ``epoch`` (the last one when the trial stopped before it)."""
    return values[min(epoch, len(values)) - 1]


def signals(run: dict[str, Any], rungs: list[int]) -> dict[str, float]:
    vals = [h["val_mae"] for h in run["history"]]
    train = [h["train_mae"] for h in run["history"]]
    best = [min(vals[: i + 1]) for i in range(len(vals))]
    out: dict[str, float] = {}
    batch = int(run["config"]["batch_size"])
    for r in rungs:
        out[f"current@{r}"] = _at(vals, r)
        out[f"best@{r}"] = _at(best, r)
        out[f"steps@{r}"] = _at(best, max(1, math.ceil(r * REFERENCE_BATCH / batch)))
        out[f"train@{r}"] = _at(train, r)
        out[f"mean@{r}"] = 0.5 * (out[f"best@{r}"] + out[f"train@{r}"])
        out[f"rung@{r}"] = rung_score(out[f"best@{r}"], out[f"train@{r}"], r)
    return out


def ranks(xs: list[float]) -> list[float]:
    """Average ranks (1-based), ties share their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else None


def top_pruned(signal: list[float], final: list[float], top: int = TOP, keep: float = KEEP) -> float | None:
    """Share of the ``top`` best final configurations outside the best ``keep`` by ``signal``."""
    n = len(final)
    if n < top + 1:
        return None
    kept = set(sorted(range(n), key=lambda i: signal[i])[: max(1, math.ceil(n * keep))])
    best = sorted(range(n), key=lambda i: final[i])[:top]
    return sum(i not in kept for i in best) / top


def analyse(runs: list[dict[str, Any]], epochs: int) -> dict[str, Any]:
    ok = [r for r in runs if r["history"]]
    rungs = [r for r in RUNGS if r <= epochs]
    final = [min(h["val_mae"] for h in r["history"]) for r in ok]
    sigs = [signals(r, rungs) for r in ok]
    table = []
    for kind in KINDS:
        for r in rungs:
            key = f"{kind}@{r}"
            col = [s[key] for s in sigs]
            table.append({"signal": key, "kind": kind, "rung": r, "spearman": spearman(col, final),
                          "top5_pruned": top_pruned(col, final)})
    # Within warm-up: the rung's rank among the trials still warming up there vs done.
    warm = []
    for r in rungs:
        inside = [i for i, run in enumerate(ok) if int(run["config"].get("warmup_epochs", 0)) >= r]
        warm.append({"rung": r, "trials_in_warmup": len(inside),
                     "their_final_rank_mean": (sum(ranks(final)[i] for i in inside) / len(inside)) if inside else None,
                     "their_current_rank_mean": (sum(ranks([s[f"current@{r}"] for s in sigs])[i] for i in inside)
                                                 / len(inside)) if inside else None})
    return {"trials": len(ok), "failed": len(runs) - len(ok), "rungs": rungs, "final_best": final,
            "table": table, "warmup": warm}


def plot(doc: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110, layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    a = doc["analysis"]
    for kind, style in (("current", "o--"), ("best", "o-"), ("steps", "s:"), ("train", "^-."), ("mean", "v:"),
                        ("rung", "D-")):
        rows = [r for r in a["table"] if r["kind"] == kind and r["spearman"] is not None]
        ax.plot([r["rung"] for r in rows], [r["spearman"] for r in rows], style, label=f"{kind}@rung")
    ax.axhline(0.7, color="tab:green", lw=1, ls="--", label="goal 0.7")
    ax.set_xlabel("rung (epoch)")
    ax.set_ylabel("Spearman rho with final best val MAE")
    ax.set_title(f"Rung fidelity ({a['trials']} configs, {doc['size']['epochs']} epochs, {doc['variant']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for run in doc["runs"]:
        vals = [h["val_mae"] for h in run["history"]]
        ax2.plot(range(1, len(vals) + 1), vals, lw=0.8, alpha=0.7)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation MAE")
    ax2.set_title("every configuration's validation MAE per epoch")
    ax2.grid(alpha=0.3)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cosine-epochs", type=int, default=None,
                    help="cosine horizon of every config (0 = the budget); default: the space's own")
    ap.add_argument("--first-rung", type=int, default=None,
                    help="sample the space a study with this first ASHA rung gets (default: the plain space)")
    ap.add_argument("--configs", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    add_data_args(ap, "mosi")
    ap.add_argument("--label", default=None, help="suffix of the result file name (e.g. before)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--reanalyse", type=Path, default=None,
                    help="recompute the analysis and plot of a results JSON (no training)")
    args = ap.parse_args(argv)
    if args.reanalyse is not None:
        import json

        doc = json.loads(args.reanalyse.read_text())
        doc["analysis"] = analyse(doc["runs"], doc["size"]["epochs"])
        write_json(args.reanalyse, doc)
        plot(doc, args.reanalyse.with_suffix(".png"))
        print_table(doc["analysis"]["table"], [("signal", "signal", 0), ("spearman", "rho", 3),
                                               ("top5_pruned", "top-5 pruned", 2)])
        return 0
    mode = mode_of(args)
    size = dict(SIZES[mode])
    size["configs"] = args.configs or size["configs"]
    size["epochs"] = args.epochs or size["epochs"]
    variant = ", ".join(filter(None, [
        "space default" if args.cosine_epochs is None else f"cosine_epochs={args.cosine_epochs}",
        f"first_rung={args.first_rung}" if args.first_rung else "", args.label or ""]))
    tag = data_tag(args, size["data"])
    name = "rung_fidelity" + (f"_{tag}" if tag else "") + (f"_{args.label}" if args.label else "")
    out = result_path(name, mode, args.out)
    data_path, data_rec = resolve_data(args, Path(os.environ.get("MSATUNE_BENCH_DATA", "/tmp/msatune-bench-data")),
                                       size["data"], seed=0)
    size["data"] = data_rec["synthetic_preset"] or data_rec["path"]
    configs = sample_configs(size["configs"], size["epochs"], args.seed, args.cosine_epochs, args.first_rung)
    doc = base_doc("rung_fidelity", mode, {"sampler": args.seed, "data": 0})
    doc.update(size=size, variant=variant, data=data_rec, loadavg_before=loadavg())
    t0 = time.time()
    import multiprocessing as mp

    runs = []
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
        for run in pool.map(_train, [(i, c, str(data_path)) for i, c in enumerate(configs)]):
            runs.append(run)
            best = min((h["val_mae"] for h in run["history"]), default=float("nan"))
            print(f"config {run['index']}: {len(run['history'])} epochs in {run['seconds']:.0f} s, "
                  f"best val MAE {best:.4f} ({time.time() - t0:.0f} s so far)", file=sys.stderr, flush=True)
    doc["total_s"] = round(time.time() - t0, 1)
    doc["loadavg_after"] = loadavg()
    doc["runs"] = runs
    doc["analysis"] = analyse(runs, size["epochs"])
    write_json(out, doc)
    plot(doc, out.with_suffix(".png"))
    print_table(doc["analysis"]["table"], [("signal", "signal", 0), ("spearman", "rho", 3),
                                           ("top5_pruned", "top-5 pruned", 2)])
    print(f"{doc['analysis']['trials']} configs ({doc['analysis']['failed']} failed) in {doc['total_s']:.0f} s; "
          f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
