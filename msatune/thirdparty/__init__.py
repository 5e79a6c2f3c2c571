"""Every private Optuna, Ray, Keras and TensorFlow API msatune uses, one module per library.

A library's private names (``study._storage``, ``ray._private``, ``keras.src``, a Keras
optimizer's ``_backend_apply_gradients``) move without notice between releases. msatune reaches
them only through these modules, each of which says why it needs every one, which version it
was checked against, and has a ``check()`` that exercises them all against the installed library
(``tests/test_thirdparty_boundaries.py`` runs it and fails loudly when an upgrade moved one).
``tests/test_architecture.py`` fails when a private API is used anywhere else.

Nothing here imports its library at import time: ``import msatune`` stays light.
"""
