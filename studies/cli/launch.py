"""``msatune launch | resume``: run a study's search (its first run, or the next after a stop)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from msatune.augment.folds import SCHEMES
from msatune.search.search_settings import SearchSettings, deadline_of, default_startup_trials
from msatune.stop_signals import continue_with
from msatune.studies.cli.context import (
    DEFAULTS,
    AppContext,
    echo_json,
    pass_app,
    resource_options,
    storage_option,
    time_budget_option,
    where_it_runs,
)
from msatune.studies.cli.render import (
    Progress,
    budget_used_message,
    next_steps,
    render_run,
    render_show,
)
from msatune.studies.cli.space import SPACE_FORMAT
from msatune.studies.refit import (
    DEFAULT_FOLDS,
    DEFAULT_SCHEME,
    DEFAULT_SEED_REPEATS,
    FOLDS_EVIDENCE,
    SCHEME_EVIDENCE,
)

#: Seeds are offset per trial and per run and must stay valid numpy seeds.
SEED_RANGE = click.IntRange(0, 2**31 - 1)
STARTUP_DEFAULT = (f"half of --trials, 3 to 12 ({default_startup_trials(DEFAULTS.trials)} of "
                   f"{DEFAULTS.trials})")

LAUNCH_HELP = f"""Launch a new study: Optuna TPE picks configurations, Ray Tune runs them, ASHA stops poor ones.

\b
The first trials are the users' recipes of the searched families (--family improved, the
default: `baseline` and `improved`; seqlevel: `seqlevel`, msa-tf2's MSASeqLevelModel recipe;
all: those and `balanced`), so every study shows what the search gained over them. Trials report validation MAE every epoch; a trial's value is
its best validation MAE. ASHA stops a trial at a rung (grace period × reduction factor^k epochs:
3, 9, 27 by default) when it is not in the best 1/R there, ranked on its training MAE through
epoch 3 and more and more on its best validation MAE so far after it, half of each from epoch
9 (measured on several data structures to rank configurations by their final result far better
than the small validation split's early MAE; benchmarks/README.md). Searched trials
warm up before the first rung and anneal over --max-epochs. Everything is stored in the study
store; Ctrl-C stops cleanly and `msatune resume NAME` continues. The test split is never used
to choose anything.

\b
Checks come first and cost seconds: the name, the options, the data and the --space file are
validated before Ray starts, and the requested CPUs/GPUs are checked against the cluster before
the study is created. A run that is stopped (Ctrl-C) exits with status 130; SIGTERM (kill,
Slurm, systemd) stops it the same way and exits with status 143.

{SPACE_FORMAT}

\b
Examples:
  msatune launch demo1 --trials 20 --max-epochs 27
  msatune launch mosi-a --data data/mosi --trials 100 --gpus-per-trial 0.5
  msatune launch narrow --space space.toml --trials 40
  msatune launch night --data data/mosi --trials 200 --time-budget 8h
  msatune launch xattn --data data/mosei --family seqlevel --trials 30
  msatune launch mixed --family all --trials 40      (ensembles across architectures)
  msatune launch raw --data data/mmsa --clip-labels      (labels outside [-3, 3] clipped)
  msatune launch big --address 10.0.0.5:6379 --gpus-per-trial 1
"""


@click.command("launch", help=LAUNCH_HELP)
@click.argument("name")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory (msa-tf2 layout) [default: the synthetic mosi set in the workspace].")
@click.option("--trials", type=int, default=DEFAULTS.trials, show_default=True, help="Trial budget of the study.")
@click.option("--max-epochs", type=int, default=DEFAULTS.max_epochs, show_default=True,
              help="Epoch budget of one trial (ASHA max_t).")
@click.option("--grace-period", type=int, default=None,
              help=f"Epochs before ASHA may stop a trial. [default: {DEFAULTS.grace}, at most --max-epochs]")
@click.option("--reduction-factor", type=int, default=DEFAULTS.reduction_factor, show_default=True,
              help="ASHA keeps the best 1/R at each rung.")
@resource_options
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="TOML file narrowing or replacing the search space.")
@click.option("--family", default="improved", show_default=True, metavar="improved|seqlevel|all",
              help="Model families searched: improved (ImprovedMSAModel), seqlevel (the "
                   "sequence-level cross-attention MSASeqLevelModel) or all (the sampler picks per "
                   "trial; ensembles then mix architectures). The study starts with those families' "
                   "presets.")
@click.option("--seed", type=SEED_RANGE, default=DEFAULTS.seed, show_default=True, help="Seed of the sampler and of the trials.")
@click.option("--startup-trials", type=int, default=None,
              help="Random trials before TPE models the results, the presets among them (recorded; "
                   "resume keeps it). 0: TPE from the first trial; --trials or more: random search. "
                   f"[default: {STARTUP_DEFAULT}]")
@click.option("--clip-labels", is_flag=True,
              help="Clip labels outside [-3, 3] instead of refusing the data (recorded; resume applies it too).")
@click.option("--max-failures", type=int, default=DEFAULTS.max_failures, show_default=True,
              help="Retries of a trial after a transient error.")
@click.option("--refit-top", type=int, default=0, show_default=True,
              help="After the search, refit its K best COMPLETE configurations (all of them when "
                   "ASHA let fewer finish) by --refit-scheme (msatune refit, in the same command; "
                   "recorded, so resume continues it); then `msatune ensemble NAME` bags them. 0: no refit.")
@click.option("--refit-scheme", type=click.Choice(SCHEMES), default=None,
              help=f"How the refit retrains them [default: folds when --refit-folds is given, else "
                   f"{DEFAULT_SCHEME}]. {SCHEME_EVIDENCE}")
@click.option("--refit-repeats", type=int, default=None,
              help=f"Seed repeats per configuration of a seeds refit, repeats of the fold split of a folds "
                   f"refit [default: {DEFAULT_SEED_REPEATS} (seeds), 1 (folds)].")
@click.option("--refit-folds", type=int, default=None,
              help=f"Folds of the refit (implies --refit-scheme folds) [default: {DEFAULT_FOLDS}]. {FOLDS_EVIDENCE}")
@storage_option
@time_budget_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@pass_app
def launch(app: AppContext, name: str, data_dir: Path | None, trials: int, max_epochs: int,
           grace_period: int | None, reduction_factor: int, cpus_per_trial: float | None,
           gpus_per_trial: float | None, concurrency: int | None, address: str | None,
           space_file: Path | None, family: str, seed: int, startup_trials: int | None, clip_labels: bool,
           max_failures: int, refit_top: int, refit_scheme: str | None, refit_repeats: int | None,
           refit_folds: int | None, storage: str | None,
           time_budget: float | None, as_json: bool) -> None:
    from msatune.search.space import check_search_family
    from msatune.studies.runs import launch as do_launch

    started = time.monotonic()  # a --time-budget counts from here: data and Ray count too
    check_search_family(family)
    refit_after = _refit_plan(refit_top, refit_folds, refit_scheme, refit_repeats)
    continue_with(f"msatune resume {name}")

    settings = SearchSettings(
        trials=trials, max_epochs=max_epochs, grace_period=grace_period, reduction_factor=reduction_factor,
        cpus_per_trial=cpus_per_trial if cpus_per_trial is not None else DEFAULTS.cpus_per_trial,
        gpus_per_trial=gpus_per_trial if gpus_per_trial is not None else DEFAULTS.gpus_per_trial,
        concurrency=concurrency, seed=seed, n_startup_trials=startup_trials, address=address,
        max_failures=max_failures, verbose=app.verbose,
        time_budget_s=time_budget, budget_from=started,
    ).validate()
    with Progress(name, json_mode=as_json) as progress:
        summary = do_launch(app.ws, app.storage_url(storage), name, settings, data_dir=data_dir,
                            space_file=space_file, clip_labels=clip_labels, progress=progress,
                            family=family, refit_after=refit_after)
    where = where_it_runs(app, cpus_per_trial, gpus_per_trial, concurrency, address)
    refit = _refit(app, storage, name, refit_after, summary, where, as_json, settings.deadline())
    _finish(app, storage, name, summary, as_json, refit)


def _refit_plan(top_k: int, folds: int | None, scheme: str | None = None,
                repeats: int | None = None) -> dict[str, int | str] | None:
    """``--refit-top``/``--refit-scheme``/``--refit-folds``/``--refit-repeats`` checked before
    anything runs, settled to what the refit will be (None: no refit)."""
    from msatune.errors import UserError
    from msatune.studies.refit.run import RefitOptions

    if top_k < 0:
        raise UserError(f"--refit-top must be >= 0 (got {top_k}); 0 runs no refit")
    if top_k == 0:
        if scheme is not None or folds is not None or repeats is not None:
            raise UserError("--refit-scheme, --refit-folds and --refit-repeats describe the refit of --refit-top K; "
                            "give --refit-top K too (e.g. --refit-top 3)")
        return None
    options = RefitOptions(top_k=top_k, scheme=scheme, folds=folds, repeats=repeats).validate()
    options = options.settled(None).validate()
    plan: dict[str, int | str] = {"top_k": top_k, "scheme": str(options.scheme), "repeats": int(options.repeats or 1)}
    if options.scheme == "folds":
        plan["folds"] = int(options.folds or DEFAULT_FOLDS)
    return plan


def _refit(app: AppContext, storage: str | None, name: str, plan: dict[str, int | str] | None, summary: dict,
           where: dict, as_json: bool, deadline: float | None = None) -> dict | None:
    """The refit ``--refit-top`` asked for, after a search that was not interrupted and used its
    budget (a run its --time-budget ended leaves the refit to the resume that finishes the search):
    it continues a refit a killed or stopped run began (its finished folds are not trained again).
    ``deadline`` (the command's --time-budget, ``time.monotonic()``): no fold starts after it; one
    already past leaves the whole refit to ``resume``."""
    if plan is None or summary.get("interrupted"):
        return None
    if summary.get("out_of_time"):
        click.echo(f"msatune: note: the refit of the top {plan['top_k']} (--refit-top) runs once the search "
                   f"has used its budget: msatune resume {name}", err=True)
        return None
    if deadline is not None and time.monotonic() >= deadline:
        click.echo(f"msatune: note: the time budget was used before the refit could start; the refit of the "
                   f"top {plan['top_k']} (--refit-top) runs with: msatune resume {name}", err=True)
        return None
    from msatune.studies.cli.refit import RefitProgressLine
    from msatune.studies.refit.run import RefitOptions, run_refit

    # up to K: how many trials ASHA lets finish is known only now
    # a plan recorded before schemes names folds only: the fold scheme (RefitOptions.settled)
    options = RefitOptions(top_k=int(plan["top_k"]), scheme=plan.get("scheme"), folds=plan.get("folds"),
                           repeats=plan.get("repeats"), up_to=True).validate()
    with RefitProgressLine(as_json, name) as progress:
        return run_refit(app.ws, app.storage(storage, create=False), name, options, where=where,
                         progress=progress, deadline=deadline, after_search=True)


RESUME_HELP = """Continue a study after a crash, kill or Ctrl-C, losing no finished trial.

\b
First ends Ray processes a dead driver left behind, then reconciles the store (trials left
RUNNING become FAIL, tagged, and their configurations are queued again), then runs a fresh
search on the same study for the rest of its budget (or --trials N more).

\b
Examples:
  msatune resume demo1
  msatune resume demo1 --trials 10
  msatune resume demo1 --time-budget 3h30m      (a 4-hour job: no trial starts after 3.5 h)
"""


@click.command("resume", help=RESUME_HELP)
@click.argument("name")
@click.option("--trials", type=int, default=None, help="Run N more trials instead of the rest of the budget.")
@click.option("--force", is_flag=True, help="Continue even if the dataset's fingerprint changed.")
@resource_options
@storage_option
@time_budget_option
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@pass_app
def resume(app: AppContext, name: str, trials: int | None, force: bool, cpus_per_trial: float | None,
           gpus_per_trial: float | None, concurrency: int | None, address: str | None,
           storage: str | None, time_budget: float | None, as_json: bool) -> None:
    from msatune.studies.runs import refit_after_search
    from msatune.studies.runs import resume as do_resume

    started = time.monotonic()  # a --time-budget counts from here: data and Ray count too
    where = where_it_runs(app, cpus_per_trial, gpus_per_trial, concurrency, address)
    continue_with(f"msatune resume {name}")
    with Progress(name, json_mode=as_json) as progress:
        summary = do_resume(app.ws, app.storage_url(storage), name, more_trials=trials, force=force,
                            where=where, progress=progress, time_budget_s=time_budget, budget_from=started)
    plan = refit_after_search(app.storage_url(storage), name)
    refit = _refit(app, storage, name, plan, summary, where, as_json, deadline_of(time_budget, started))
    _finish(app, storage, name, summary, as_json, refit)


def _finish(app: AppContext, storage: str | None, name: str, summary: dict, as_json: bool,
            refit: dict | None = None) -> None:
    """Render a run's summary, the study and the refit that followed it; exit 130 when the run or
    the refit was interrupted (Ctrl-C), so ``msatune launch ... && msatune ensemble ...`` stops there."""
    from msatune.studies.cli.refit import render_refit
    from msatune.studies.queries import show_study

    shown = show_study(app.reader(storage), name, 5)
    if as_json:
        message = budget_used_message(summary, name)
        echo_json({**summary, **({"message": message} if message else {}),
                   "best": shown["best"], "counts": shown["counts"], "reference": shown["reference"],
                   **({"refit": refit} if refit is not None else {})})
    else:
        render_run(summary, name)
        render_show(shown, next_steps(app.ws, name))
        if refit is not None:
            render_refit(refit, again=f"msatune resume {name}")
    if summary.get("interrupted") or (refit is not None and refit["run"].get("interrupted")):
        what = "trials" if summary.get("interrupted") else "refit folds"
        click.echo(f"msatune: interrupted; finished {what} are stored; continue with: msatune resume {name}",
                   err=True)
        raise click.exceptions.Exit(130)
