"""A study's refit: its best configurations retrained on folds of train+valid, and what comes of it.

:mod:`.run` is ``msatune refit`` (choose, train on Ray Tune, record each fold, write the OOF
files); :mod:`.table` reads a refit back (the validation-vs-OOF table, the bagged
configurations); :mod:`.bagged` is the bagged-ensemble source of ``msatune ensemble --from refit``.
"""
