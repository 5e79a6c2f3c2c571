"""One trial and the search over many.

Trial configs and presets (:mod:`.trial_config`), a study's search settings (:mod:`.search_settings`),
the search space and its ``--space`` file (:mod:`.space`, :mod:`.space_file`), one trial
(:mod:`.trial`) and its Ray Tune side (:mod:`.trainable`), the one Ray Tune run that a search and
a refit both make (:mod:`.tune_run`), specialised as a study's search with the store-truthful
searcher and ASHA (:mod:`.study_run`, :mod:`.searcher`) and as a refit's folds (:mod:`.fold_run`),
resume reconciliation (:mod:`.reconcile`), and the Ray a run uses (:mod:`.ray_session`) with the
processes it must not leave behind (:mod:`.ray_orphans`).
"""
