"""``msatune refit``: cross-validated refits of a study's best configurations.

The work is :func:`msatune.studies.refit.run.run_refit`; this module parses and renders (the
refit table itself is :func:`msatune.studies.cli.render.render_refit_table`, which ``show`` uses too).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from msatune.augment.folds import SCHEMES
from msatune.studies.cli.context import (
    AppContext,
    console,
    echo_json,
    pass_app,
    resource_options,
    storage_option,
    time_budget_option,
    where_it_runs,
)
from msatune.studies.cli.render import render_refit_table
from msatune.studies.refit import (
    DEFAULT_FOLDS,
    DEFAULT_SCHEME,
    DEFAULT_SEED_REPEATS,
    DEFAULT_TOP_K,
    FOLDS_EVIDENCE,
    SCHEME_EVIDENCE,
)


def render_refit(summary: dict[str, Any], again: str | None = None) -> None:
    """Print a refit's summary; ``again`` is the command that continues it (default: ``msatune
    refit NAME``, the same command again)."""
    con = console()
    run = summary["run"]
    others = ", ".join(f"{v} {k.lower()}" for k, v in summary["not_considered"].items())
    chosen = ", ".join(f"#{c['trial']}" for c in summary["chosen"])
    pool = summary["pool"]
    if summary.get("trials_asked") is not None:
        con.print(f"[bold]{summary['study']}[/bold]: refit of trial(s) {chosen} (chosen with --trial)")
    else:
        con.print(f"[bold]{summary['study']}[/bold]: refit of the top {summary['top_k']} COMPLETE trials by "
                  f"validation MAE ({chosen}){'; not considered: ' + others if others else ''}")
    if summary.get("scheme") == "seeds":
        con.print(f"seeds: each configuration trained {summary['repeats']} more time(s) at other seeds on the study's "
                  f"{pool['train']} train samples with its own recipe, early-stopped and scored on its {pool['valid']} "
                  "valid samples as its trial was; the test split is not used")
    else:
        con.print(f"folds: {summary['folds']} x {summary['repeats']} repeat(s) of train+valid ({pool['total']} "
                  f"samples = {pool['train']} train + {pool['valid']} valid), stratified by sentiment class, "
                  f"seed {summary['seed']}; the test split is not used")
    if run["folds_run"] == 0 and run["already_done"] == run["folds_total"]:
        con.print(f"all {run['folds_total']} folds were already trained; nothing to do")
    else:
        con.print(f"run {run['run']}: {run['folds_run']} fold(s) trained ({run['complete']} complete, "
                  f"{run['failed']} failed) in {run['wall_seconds']:.0f} s with {run['concurrency']} at once; "
                  f"{run['already_done']} were already trained")
    render_refit_table({"scheme": summary.get("scheme"), "folds": summary["folds"], "repeats": summary["repeats"], "configs": summary["configs"],
                        "refit_study": summary["refit_study"], "failed_folds": run["failed"]})
    for w in summary.get("warnings", []):
        click.echo(f"msatune: warning: {w}", err=True)
    if run.get("interrupted"):
        con.print("interrupted: finished folds are recorded; run the same command again to continue")
    elif run.get("out_of_time"):
        order = "" if summary.get("trials_asked") is not None else " (the best configurations' folds ran first)"
        con.print(f"time budget reached: {run['folds_left']} fold(s) not started{order}; continue with: "
                  f"{again or 'msatune refit ' + summary['study']}")
    else:
        con.print(f"bagged ensemble: msatune ensemble {summary['study']} --from refit")
    con.print(f"fold models and out-of-fold predictions: {summary['directory']}")


class RefitProgressLine:
    """Folds done/failed/running, elapsed and ETA: a live line in a terminal, a line per ended
    fold otherwise (nothing when ``quiet``). The line appears with the first fold, after every
    check has passed."""

    def __init__(self, quiet: bool, name: str) -> None:
        self.quiet, self.name, self.live = quiet, name, None

    def __enter__(self) -> Any:
        return None if self.quiet else self.update

    def update(self, p: Any) -> None:
        from rich.text import Text

        eta = time.strftime("%M:%S", time.gmtime(p.eta)) if p.eta is not None else "?"
        line = (f"{self.name} refit: {p.done + p.failed}/{p.total} folds ({p.done} complete, {p.failed} failed), "
                f"{p.running} running | elapsed {time.strftime('%M:%S', time.gmtime(p.elapsed))} ETA {eta}")
        if sys.stdout.isatty():
            if self.live is None:
                from rich.live import Live

                self.live = Live(Text(line), console=console(), refresh_per_second=4)
                self.live.__enter__()
            self.live.update(Text(line))
        elif p.last is not None:
            last = p.last.task
            what = (f"held-out MAE {p.last.held_out_mae:.4f}" if p.last.state == "COMPLETE"
                    else f"FAILED: {p.last.reason}")
            click.echo(f"{line} | trial {last.trial} repeat {last.repeat} fold {last.fold}: {what}")

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)


REFIT_HELP = """Retrain a study's best configurations at other seeds or on k folds of train+valid: a more
reliable ranking than one trial on one small validation split, and several models per configuration
for bagged ensembles.

\b
Takes the study's --top-k COMPLETE trials by validation MAE, or the ones named by --trial (pruned
and failed trials are never refit). The default --scheme seeds trains each --repeats more times
(default 3) at other seeds on the study's own train split, with the trial's own recipe (early
stopping on valid included); each configuration is then ranked by the valid MAE of its seeds'
average (its trial's model among them), and its bag averages them all at equal shares. This beat
the fold scheme in our benchmarks (median 0.931 vs 0.941 x the best single's test MAE over 6
studies, better on 4) at 0.93x its time (benchmarks/README.md, "The seeds scheme through the product").

\b
--scheme folds (or giving --folds) trains each on --folds stratified folds of train+valid,
--repeats times: the same folds for every configuration (stratified by the seven Acc-7 sentiment
classes, so --folds may not exceed the smallest class), each fold with the trial's own recipe for as
many epochs as the trial trained in the search (no early stopping: a fold stopped by the held-out
fold's noisy first epochs could keep weights no better than a constant). The test split is never
loaded into the run. Each configuration gets its out-of-fold (OOF) MAE: every train+valid sample
predicted by the fold model that did not train on it. Each fold also picked its best epoch on its
held-out fold, so OOF MAE is slightly optimistic (as the study's val MAE is); it ranks
configurations on 5x the samples of one validation split.

\b
Folds run on Ray Tune with the study's resources (or the options below). Each finished fold is
recorded in the store at once (study NAME:refit), so Ctrl-C or a crash loses no finished fold (a
stopped refit exits with status 130, or 143 on SIGTERM, so `refit ... && ensemble ...` stops): run
the same command again to continue (a larger --top-k or another --trial adds configurations to the
refit, which keeps those refit before; unset --scheme/--folds/--repeats/--seed are the refit's own, so
`launch --refit-top`'s refit continues too; other ones need --replace, which discards the old
refit). A refit its --time-budget ended exits 0, as a search does: `ensemble --from refit` then
bags the configurations whose folds all finished (the best first). Fold checkpoints and
WORKSPACE/studies/NAME/refit/oof/trial_N.npz (OOF predictions) are written under the study.

\b
Examples:
  msatune refit mosi-a --top-k 3                    (3 seed repeats of each of the 3 best)
  msatune refit mosi-a --top-k 8 --folds 5 --repeats 2 --gpus-per-trial 0.5   (the fold scheme)
  msatune refit mosi-a --top-k 8                    (again after Ctrl-C or a crash: continues)
  msatune refit mosi-a --time-budget 2h             (no fold starts after 2 h; again: continues)
  msatune refit mosi-a --trial 0 --trial 1          (the presets, trials 0 and 1 of a default study)
  msatune ensemble mosi-a --from refit              (bagged ensemble fitted on the refit's predictions)
  msatune show mosi-a                               (validation vs seeds' or OOF MAE, rank change)
"""


@click.command("refit", help=REFIT_HELP)
@click.argument("name")
@click.option("--top-k", type=int, default=None, help=f"Configurations to refit, best first by validation MAE [default: {DEFAULT_TOP_K}].")
@click.option("--trial", "trials", type=int, multiple=True, metavar="N",
              help="Refit trial N (repeatable) instead of the --top-k best: e.g. the presets, or a trial the "
                   "report names. It must be COMPLETE.")
@click.option("--scheme", type=click.Choice(SCHEMES), default=None,
              help=f"How configurations are retrained [default: the study's refit's, else folds when --folds is "
                   f"given, else {DEFAULT_SCHEME}]. {SCHEME_EVIDENCE}")
@click.option("--folds", type=int, default=None,
              help=f"Folds of train+valid (k; implies --scheme folds) [default: the study's refit's, else "
                   f"{DEFAULT_FOLDS} as launch --refit-folds]. {FOLDS_EVIDENCE}")
@click.option("--repeats", type=int, default=None,
              help=f"Seed repeats per configuration (seeds), or repeats with other fold splits (folds) [default: the "
                   f"study's refit's, else {DEFAULT_SEED_REPEATS} (seeds) or 1 (folds)].")
@click.option("--seed", type=int, default=None,
              help="Seed of the fold assignment, --scheme folds only [default: the study's refit's, else 0].")
@click.option("--replace", is_flag=True, help="Start over when the study's refit used other --folds/--repeats/--seed (its fold models are discarded); with the same ones, a rerun continues it.")
@resource_options
@storage_option
@time_budget_option
@click.option("--json", "as_json", is_flag=True, help="Print the refit summary as JSON.")
@pass_app
def refit(app: AppContext, name: str, top_k: int | None, trials: tuple[int, ...], scheme: str | None,
          folds: int | None,
          repeats: int | None, seed: int | None, replace: bool, cpus_per_trial: float | None,
          gpus_per_trial: float | None, concurrency: int | None, address: str | None, storage: str | None,
          time_budget: float | None, as_json: bool) -> None:
    from msatune.search.search_settings import deadline_of
    from msatune.studies.refit.run import RefitOptions, run_refit

    started = time.monotonic()  # a --time-budget counts from here: data and Ray count too
    if trials and top_k is not None:
        raise click.UsageError("give --top-k K (the K best trials) or --trial N (those trials), not both")
    options = RefitOptions(top_k=DEFAULT_TOP_K if top_k is None else top_k, trials=trials or None, scheme=scheme,
                           folds=folds,
                           repeats=repeats, seed=seed, replace=replace).validate()
    store = app.storage(storage, create=False)  # a mistyped name or store creates nothing
    where = where_it_runs(app, cpus_per_trial, gpus_per_trial, concurrency, address)
    with RefitProgressLine(as_json, name) as progress:
        summary = run_refit(app.ws, store, name, options, where=where, progress=progress,
                            deadline=deadline_of(time_budget, started))
    if as_json:
        echo_json(summary)
    else:
        render_refit(summary)
    if summary["run"].get("interrupted"):  # Ctrl-C (130) or SIGTERM (143): `refit ... && ensemble` stops
        raise click.exceptions.Exit(130)
