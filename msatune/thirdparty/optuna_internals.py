"""Optuna's private API as msatune uses it (checked against optuna 5.1.0; schema ``v3.2.0.a``).

* ``Study._storage`` / ``Study._study_id`` (and ``FrozenStudy._study_id``): the storage and the
  row id of a study. Optuna's public API reaches a study's user attrs and trials only by loading
  every trial; the lease, the SQL queries and the store-level writes (fail and re-queue a trial
  a dead driver left RUNNING) need the storage calls by id.
* ``Trial._trial_id`` / ``FrozenTrial._trial_id``: a trial's row id, for the same storage calls.
* ``Trial._fixed_params``: the values an enqueued trial (a preset) was given; Optuna has no public
  accessor on a live trial (the frozen trial's ``system_attrs["fixed_params"]`` is the stored copy).
* ``optuna.storages._cached_storage._CachedStorage`` and its ``_backend``: Optuna's cache of
  finished trials (the dashboard serves through it: a poll of a 2,000-trial study drops from
  seconds to tens of milliseconds), and the RDB storage behind it (the SQL queries).
* ``optuna.storages._rdb.models.StudyUserAttributeModel``: the RDB table of study user attrs, for
  the one conditional update the lease's heartbeat needs (compare-and-set: Optuna has none). A
  value is stored as ``json.dumps(value)``, which the comparison relies on.
* ``BaseDistribution._contains``: whether a value lies in a distribution (a preset's value outside
  the searched range becomes a constant of its config, not a param).
"""

from __future__ import annotations

from typing import Any

#: The Optuna release these accesses were last checked against.
CHECKED_AGAINST = "5.1.0"


def study_storage(study: Any) -> Any:
    """The storage of an ``optuna.Study``."""
    return study._storage


def study_id(study: Any) -> int:
    """The storage id of an ``optuna.Study`` or a ``FrozenStudy``."""
    return int(study._study_id)


def trial_id(trial: Any) -> int:
    """The storage id of an ``optuna.Trial`` or a ``FrozenTrial``."""
    return int(trial._trial_id)


def frozen_trial(study: Any, trial: Any) -> Any:
    """The stored state of a live ``optuna.Trial`` of ``study``, read fresh from the storage."""
    return study_storage(study).get_trial(trial_id(trial))


def fixed_params(trial: Any) -> dict[str, Any]:
    """The values an enqueued trial was given (empty for a sampled one, or for a Ray captor)."""
    return dict(getattr(trial, "_fixed_params", None) or {})


def cached_storage(backend: Any) -> Any:
    """``backend`` behind Optuna's cache of finished trials."""
    from optuna.storages._cached_storage import _CachedStorage

    return _CachedStorage(backend)


def uncached(storage: Any) -> Any:
    """The storage behind Optuna's cache (``storage`` itself when it is not a cache)."""
    return getattr(storage, "_backend", storage)


def compare_and_set_study_attr(storage: Any, study: int, key: str, expected: Any, new: Any) -> bool | None:
    """Set study user attr ``key`` to ``new`` only if it still is ``expected``, in one SQL
    ``UPDATE ... WHERE``; True when it was set, False when another writer changed it, ``None``
    for a store without SQL tables (the caller falls back to write-then-verify)."""
    import json

    import optuna

    backend = uncached(storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    import sqlalchemy
    from optuna.storages._rdb.models import StudyUserAttributeModel as Attr

    statement = (sqlalchemy.update(Attr)
                 .where(Attr.study_id == study, Attr.key == key, Attr.value_json == json.dumps(expected))
                 .values(value_json=json.dumps(new)))
    with backend.engine.begin() as connection:
        return connection.execute(statement).rowcount == 1


def distribution_contains(dist: Any, value: Any) -> bool:
    """Whether ``value`` lies in the Optuna distribution ``dist`` (False for a value of the wrong
    type)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def check() -> list[str]:
    """Every access above, tried on a real in-memory study; what failed (empty: all work)."""
    import optuna

    problems: list[str] = []

    def attempt(what: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any failure is a moved internal
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
            return None

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="boundary-check")
    study.enqueue_trial({"x": 0.5})
    trial = study.ask()
    attempt("Study._storage", lambda: study_storage(study).get_study_id_from_name("boundary-check"))
    attempt("Study._study_id", lambda: storage.get_study_user_attrs(study_id(study)))
    attempt("FrozenStudy._study_id", lambda: study_id(storage.get_all_studies()[0]))
    frozen = attempt("Trial._trial_id", lambda: frozen_trial(study, trial))
    if frozen is not None:
        attempt("FrozenTrial._trial_id", lambda: trial_id(frozen) == trial_id(trial) or 1 / 0)
    if attempt("Trial._fixed_params", lambda: fixed_params(trial)) != {"x": 0.5}:
        problems.append("Trial._fixed_params: the enqueued values are not there")
    cached = attempt("_CachedStorage", lambda: cached_storage(storage))
    if cached is not None and uncached(cached) is not storage:
        problems.append("_CachedStorage._backend: not the wrapped storage")
    rdb = attempt("RDBStorage", lambda: optuna.storages.RDBStorage("sqlite:///:memory:"))
    if rdb is not None:
        sid = rdb.create_new_study([optuna.study.StudyDirection.MINIMIZE], "boundary-check")
        rdb.set_study_user_attr(sid, "k", {"token": 1})
        swapped = attempt("StudyUserAttributeModel", lambda: (
            compare_and_set_study_attr(rdb, sid, "k", {"token": 1}, {"token": 2}),
            compare_and_set_study_attr(rdb, sid, "k", {"token": 1}, {"token": 3})))
        if swapped is not None and (swapped != (True, False) or rdb.get_study_user_attrs(sid)["k"] != {"token": 2}):
            problems.append(f"StudyUserAttributeModel: compare-and-set answered {swapped}")
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    if attempt("BaseDistribution._contains", lambda: distribution_contains(dist, 0.5)) is not True \
            or distribution_contains(dist, 2.0):
        problems.append("BaseDistribution._contains: wrong answer for 0.5 / 2.0 in [0, 1]")
    return problems
