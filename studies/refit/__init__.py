"""A study's refit: its best configurations retrained at other seeds or on folds of train+valid,
and what comes of it.

:mod:`.run` is ``msatune refit`` (train on Ray Tune, record each fold, write the OOF files) on
the trials :mod:`.choice` picks; :mod:`.table` reads a refit back (the validation-vs-OOF table, the bagged
configurations); :mod:`.bagged` is the bagged-ensemble source of ``msatune ensemble --from refit``.
"""

#: Folds of a refit when neither the command nor the study's earlier refit names them
#: (``msatune refit`` and ``launch --refit-folds`` alike). Chosen for cost: 5 folds predicted test
#: better on mosi-like data (4 of 4 seeds, by 0.1-5%) but not on lexicon-like data (2 of 3, within
#: 0.6%, median worse) for 1.25-2.1x the refit's wall time (benchmarks/README.md, "Mosi at 5 folds,
#: all four seeds" and "Lexicon at 5 folds").
DEFAULT_FOLDS = 3
#: Configurations ``msatune refit`` retrains when given neither --top-k nor --trial.
DEFAULT_TOP_K = 5
#: What the choice rests on, as both --folds helps (refit, launch --refit-folds) say it.
FOLDS_EVIDENCE = ("5 folds predicted test better than 3 on mosi-like data (4 of 4 seeds, by 0.1-5%), "
                  "in 2 of 3 seeds on lexicon-like data (within 0.6%, median worse), for 1.25-2.1x "
                  "the refit's time (benchmarks/README.md).")
#: The refit scheme when neither the command (--scheme, or --folds, which means folds) nor the
#: study's earlier refit names one: the study's own split trained again at other seeds. Over six
#: default-path studies (3 structures), run through ``refit --scheme seeds``, its greedy ensemble was
#: a median 0.931 x the val-selected single on test against 0.941 x for the 3-fold refit (better on
#: 4 of 6), at 0.93 x the fold refit's wall time (benchmarks/README.md, "The seeds scheme through the
#: product on all six runs"; offline first: "Seed repeats where the fold refit lost").
DEFAULT_SCHEME = "seeds"
#: Seed repeats per configuration of the seeds scheme (with the trial's own model: 4 seeds, as measured).
DEFAULT_SEED_REPEATS = 3
#: What the scheme's default rests on, as the --scheme helps say it.
SCHEME_EVIDENCE = ("seeds (the default): each configuration trained again at --repeats other seeds on the "
                   "study's own train split, early-stopped on valid as its trial was; over 6 benchmark studies its "
                   "ensemble predicted test better than 3 folds' (median 0.931 vs 0.941 x the best single; "
                   "better on 4 of 6) for 0.93 x the time. folds: k stratified folds of train+valid (out-of-fold predictions of every "
                   "sample; --folds implies it).")
