"""The service front door, in wings: :mod:`.cli` (the ``msatune`` commands), :mod:`.store` (the
study store, leases, the workspace on disk), :mod:`.report` and :mod:`.refit`; beside them the
service core: :mod:`.runs` (launch and resume), :mod:`.ensembles`, :mod:`.queries`,
:mod:`.dashboard`, :mod:`.delete`, :mod:`.export`, :mod:`.predictions`, :mod:`.train_one` and
:mod:`.study_data` (the one check that a study's data is still the data it ran on)."""
