"""What msatune records and where it lives: the study store and the workspace.

:mod:`.connect` opens a store from its URL; :mod:`.studies` creates, loads and names studies and
reads what msatune records on them; :mod:`.sql` answers the few questions a big study needs in
SQL; :mod:`.lease` keeps one driver per study; :mod:`.refit_records` and
:mod:`.ensemble_records` own the formats of a study's refit and of its ensembles in the store;
:mod:`.workspace` knows where everything lives on disk.
"""
