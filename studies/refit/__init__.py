"""A study's refit: its best configurations retrained on folds of train+valid, and what comes of it.

:mod:`.run` is ``msatune refit`` (choose, train on Ray Tune, record each fold, write the OOF
files); :mod:`.table` reads a refit back (the validation-vs-OOF table, the bagged
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
