"""``msatune demo``: synthetic data → a small study → best trial → ensemble → what to run next."""

from __future__ import annotations

import os
import time

import click

from msatune.errors import UserError
from msatune.studies.cli.context import AppContext, console, pass_app, time_budget_option
from msatune.studies.cli.launch import SEED_RANGE

DEMO_HELP = """Run the whole product once on the embedded synthetic MOSI-like dataset.

\b
1. writes the synthetic dataset (1284/229/686 samples, T=20, dims 300/74/47) into the workspace
2. launches a small study (Optuna TPE + ASHA on Ray; 6 trials x up to 12 epochs: the demo
   takes about 4 minutes on 2 CPU cores, the ensemble included); its first two trials are the
   users' `baseline` and `improved` recipes, and how long each trained is printed at the end
3. shows the best trials next to the constant predictor and the dataset's noise floor
4. builds a greedy ensemble of the best trials and compares it with the best single model
5. tells you how to open the dashboard and where everything is

\b
Example:
  msatune demo                      (study name demo, demo-2, ... if it exists)
  msatune --workspace /tmp/w demo --trials 4 --max-epochs 3      (a quicker look)
  msatune demo --trials 10              (more of the search; 5-6 minutes on 2 cores)
"""


#: The demo's trial budget: the two presets, the first random draw and 3 of TPE's proposals.
#: 6, not 10 (until stop 58): the same best trial, ensemble members and numbers (test -4.0% vs
#: the best single) in 243 s instead of 364 s on the same 2-core VM: of 10 trials only the first
#: three completed, and an ensemble's candidates are completed trials (benchmarks/README.md,
#: "The demo's budget").
DEMO_TRIALS = 6


@click.command("demo", help=DEMO_HELP)
@click.option("--name", default="demo", show_default=True, help="Study name (a free suffix is added if taken).")
@click.option("--trials", type=click.IntRange(min=2), default=DEMO_TRIALS, show_default=True,
              help="Trial budget (the two presets included).")
@click.option("--max-epochs", type=click.IntRange(min=1), default=12, show_default=True, help="Epochs per trial at most.")
@click.option("--cpus-per-trial", type=float, default=1.0, show_default=True, help="CPUs per trial.")
@click.option("--seed", type=SEED_RANGE, default=0, show_default=True, help="Seed of the study.")
@time_budget_option
@pass_app
def demo(app: AppContext, name: str, trials: int, max_epochs: int, cpus_per_trial: float, seed: int,
         time_budget: float | None) -> None:
    from msatune.augment.dataset import load_dataset
    from msatune.search.search_settings import SearchSettings
    from msatune.stop_signals import continue_with
    from msatune.studies.cli.ensemble import build_and_render
    from msatune.studies.cli.render import Progress, render_show
    from msatune.studies.queries import show_study
    from msatune.studies.runs import launch
    from msatune.studies.store.studies import check_study_name, free_study_name
    from msatune.studies.store.workspace import default_dataset

    t0 = time.monotonic()
    # Every check before the first write (the dataset): a refused demo leaves the workspace as it was.
    check_study_name(name)
    settings = SearchSettings(trials=trials, max_epochs=max_epochs, cpus_per_trial=cpus_per_trial, seed=seed,
                              verbose=app.verbose, time_budget_s=time_budget, budget_from=t0).validate()
    machine_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpus_per_trial > machine_cpus:
        raise UserError(f"--cpus-per-trial {cpus_per_trial:g} asks for more CPUs than this machine has "
                        f"({machine_cpus}); lower --cpus-per-trial")
    con = console()
    ws = app.ws
    data_path = default_dataset(ws.ensure())
    data = load_dataset(data_path)
    valid = data.splits["valid"]
    const, floor = valid.reference_maes()["constant_mae"], valid.reference_maes()["floor_mae"]
    con.print(f"[bold]1. data[/bold] {data_path}: train/valid/test {data.splits['train'].n}/{valid.n}/"
              f"{data.splits['test'].n}, valid constant-predictor MAE {const:.3f}"
              + (f", noise floor MAE {floor:.3f}" if floor is not None else ""))

    store = app.storage(None)
    study_name = free_study_name(store, name)
    con.print(f"[bold]2. search[/bold] study {study_name!r}: {trials} trials x up to {max_epochs} epochs "
              f"(TPE + ASHA, {cpus_per_trial:g} CPU per trial)")
    continue_with(f"msatune resume {study_name}")
    with Progress(study_name) as progress:
        summary = launch(ws, store, study_name, settings, data_dir=data_path, progress=progress)
    con.print(f"   {summary['trials']} trials in {summary['wall_seconds']:.0f} s: {summary['complete']} complete, "
              f"{summary['pruned']} pruned, {summary['failed']} failed")
    if summary.get("out_of_time"):
        con.print(f"   time budget of {summary['time_budget_s']:.0f} s reached: {summary['trials_left']} trial(s) "
                  f"not started; run them later with: msatune --workspace {ws.root} resume {study_name}")
    if summary.get("interrupted"):
        con.print(f"   interrupted: finished trials are stored; continue with: "
                  f"msatune --workspace {ws.root} resume {study_name}")
        raise click.exceptions.Exit(130)

    shown = show_study(store, study_name, 5)
    con.print("[bold]3. best trials[/bold]")
    render_show(shown)
    best = shown["best"]
    if best is not None:
        line = f"   best val MAE {best['val_mae']:.4f} (trial {best['number']}) vs constant {const:.4f}"
        if floor is not None:
            line += f", floor {floor:.4f}"
        con.print(line)
    for preset, rec in sorted(shown["presets"].items()):
        if rec["val_mae"] is not None:
            took = f", {rec['duration_s']:.0f} s" if rec.get("duration_s") is not None else ""
            con.print(f"   your {preset} recipe (trial {rec['number']}): val MAE {rec['val_mae']:.4f} "
                      f"({rec['state'].lower()}, {rec['epochs']} epochs{took})")

    con.print("[bold]4. ensemble[/bold]")
    try:
        build_and_render(app, store, study_name)
    except UserError as exc:  # e.g. no trial beats the constant predictor: say so, go on
        con.print(f"   no ensemble: {exc}")

    con.print("[bold]5. next[/bold]")
    con.print(f"   dashboard: msatune --workspace {ws.root} dashboard   then open http://127.0.0.1:8080")
    con.print(f"              (or: optuna-dashboard {ws.storage_url})")
    con.print(f"   details:   msatune --workspace {ws.root} show {study_name}")
    con.print(f"   more:      msatune --workspace {ws.root} resume {study_name} --trials 20")
    con.print(f"   your data: msatune --workspace {ws.root} launch mystudy --data path/to/data --trials 50")
    con.print(f"demo done in {time.monotonic() - t0:.0f} s")
