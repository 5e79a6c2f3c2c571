"""One driver per study: a lease in the store (driver id, host, pid, heartbeat).

Two drivers on one study corrupt it: the second one's reconciliation fails the first one's
RUNNING trials and re-queues them, and the first one then dies on trials it can no longer
finish. A driver therefore holds the study's lease (study user attr ``msatune:lease``) for as
long as it runs and renews its heartbeat every :data:`HEARTBEAT_S` seconds. Another driver,
``msatune resume`` or ``msatune delete`` is refused while the holder is alive:

* on the same host, while its pid exists (and is the same process: its start time is recorded),
  so a driver killed with ``kill -9`` is taken over at once;
* across hosts, while its heartbeat is younger than :func:`stale_after_s` seconds
  (``$MSATUNE_LEASE_TIMEOUT_S``, default 90).

Taking the lease is write-then-verify: two drivers that start within the same instant are told
apart by re-reading the lease after :data:`VERIFY_DELAY_S`; the later writer keeps it.

Fencing: every taking of the lease increases its ``token``. The holder's heartbeat is a
compare-and-set on the record it last wrote (one SQL ``UPDATE ... WHERE`` through the Optuna
boundary; write-then-verify on stores without SQL), and the run asks :meth:`StudyLease.held`
before each write of a trial result and before each new trial: a driver that stalled past the
timeout and was taken over (its record, or token, is no longer the study's) writes nothing more
and ends with :class:`LeaseLost` (exit status 3). A released lease keeps its token
(``released``), so tokens only grow. ``$MSATUNE_HOST`` names this host in the lease (tests
simulate a second host with it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from msatune.errors import UserError
from msatune.processes import alive, process_start_ticks
from msatune.studies.store.studies import ATTR_PREFIX
from msatune.thirdparty.optuna_internals import compare_and_set_study_attr, study_id, study_storage

log = logging.getLogger(__name__)

LEASE_KEY = ATTR_PREFIX + "lease"
HEARTBEAT_S = 10.0
VERIFY_DELAY_S = 0.5
TIMEOUT_ENV = "MSATUNE_LEASE_TIMEOUT_S"
HOST_ENV = "MSATUNE_HOST"


def host_name() -> str:
    """This host's name in a lease: ``$MSATUNE_HOST`` or the machine's host name."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


class LeaseLost(UserError):
    """This driver's lease was taken over while it stalled: it stopped writing (exit status 3)."""

    exit_code = 3


def stale_after_s() -> float:
    """Seconds without a heartbeat after which another host's lease may be taken over."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV, "90")))
    except ValueError:
        return 90.0


@dataclass
class Lease:
    driver: str
    host: str
    pid: int
    heartbeat: float
    started: int | None = None
    command: str = ""
    token: int = 0
    released: bool = False

    def holder_alive(self, now: float | None = None) -> bool:
        if self.released:
            return False
        if self.host == host_name():
            if not alive(self.pid):
                return False
            return self.started is None or process_start_ticks(self.pid) in (None, self.started)
        return (now or time.time()) - self.heartbeat < stale_after_s()

    def describe(self, now: float | None = None) -> str:
        age = max(0.0, (now or time.time()) - self.heartbeat)
        what = f"msatune {self.command}" if self.command else "a driver"
        return f"{what} (pid {self.pid} on host {self.host}, heartbeat {age:.0f} s ago)"


def read_lease(storage: optuna.storages.BaseStorage, study_id: int) -> Lease | None:
    """The lease recorded on the study, fresh from the store (``None``: no lease)."""
    raw = storage.get_study_user_attrs(study_id).get(LEASE_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        return Lease(driver=str(raw["driver"]), host=str(raw["host"]), pid=int(raw["pid"]),
                     heartbeat=float(raw["heartbeat"]), started=raw.get("started"),
                     command=str(raw.get("command", "")), token=int(raw.get("token", 0)),
                     released=bool(raw.get("released", False)))
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring an unreadable lease on study %d: %r", study_id, raw)
        return None


def live_holder(study: optuna.Study) -> Lease | None:
    """The lease of the live driver that holds ``study``, or ``None`` when it is free."""
    lease = read_lease(study_storage(study), study_id(study))
    return lease if lease is not None and lease.holder_alive() else None


def check_free(study: optuna.Study, action: str) -> None:
    """Raise a UserError when a live driver holds ``study`` (``action`` says what was refused)."""
    holder = live_holder(study)
    if holder is not None:
        raise UserError(
            f"cannot {action} study {study.study_name!r}: {holder.describe()} is running it; "
            f"wait for it to end or stop it (Ctrl-C, or kill {holder.pid} on {holder.host}); a driver "
            "that died is taken over "
            f"automatically (on another host after {stale_after_s():.0f} s without a heartbeat)"
        )


class StudyLease:
    """Hold ``study``'s lease for the duration of a ``with`` block, renewing its heartbeat.

    Raises:
        UserError: on entry, when a live driver holds the study.
    """

    def __init__(self, study: optuna.Study, command: str) -> None:
        self.study = study
        self.command = command
        self.driver = uuid.uuid4().hex
        self.token = 0
        self.lost: Lease | None = None
        self._written: dict[str, Any] | None = None  # the record this driver last wrote
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, **changes: Any) -> dict[str, Any]:
        pid = os.getpid()
        return {**asdict(Lease(driver=self.driver, host=host_name(), pid=pid, heartbeat=time.time(),
                               started=process_start_ticks(pid), command=self.command, token=self.token)),
                **changes}

    def _store(self) -> tuple[Any, int]:
        return study_storage(self.study), study_id(self.study)

    def __enter__(self) -> StudyLease:
        check_free(self.study, self.command)
        storage, sid = self._store()
        before = read_lease(storage, sid)
        self.token = (before.token if before is not None else 0) + 1
        self._written = self._record()
        storage.set_study_user_attr(sid, LEASE_KEY, self._written)
        time.sleep(VERIFY_DELAY_S)
        now = read_lease(storage, sid)
        if now is None or now.driver != self.driver:
            check_free(self.study, self.command)  # another driver took it meanwhile
            raise UserError(f"cannot {self.command} study {self.study.study_name!r}: another "
                            "driver started at the same moment; try again")
        self._thread = threading.Thread(target=self._beat, name="msatune-lease", daemon=True)
        self._thread.start()
        return self

    def _swap(self, new: dict[str, Any]) -> bool:
        """Replace this driver's record by ``new`` if the store still holds it (compare-and-set;
        write-then-verify where the store has no SQL); False, and ``lost`` set, when it does not."""
        storage, sid = self._store()
        swapped = compare_and_set_study_attr(storage, sid, LEASE_KEY, self._written, new)
        if swapped is None:  # no SQL tables: read, then write while it is still ours
            swapped = self.held()
            if swapped:
                storage.set_study_user_attr(sid, LEASE_KEY, new)
        if swapped:
            self._written = new
        else:
            self._note_lost(read_lease(storage, sid))
        return bool(swapped)

    def _note_lost(self, holder: Lease | None) -> None:
        if self.lost is None:
            self.lost = holder or Lease(driver="?", host="?", pid=0, heartbeat=0.0, command="another driver")
            log.error("study %s was taken over by %s while this driver stalled; it writes nothing more",
                      self.study.study_name, self.lost.describe())

    def held(self) -> bool:
        """Whether this driver still holds the lease (read fresh from the store; once lost, lost)."""
        if self.lost is not None:
            return False
        if self._written is None:
            return True  # not taken yet: nothing to fence
        lease = read_lease(*self._store())
        if lease is None or lease.driver != self.driver or lease.token != self.token or lease.released:
            self._note_lost(lease)
            return False
        return True

    def lost_error(self) -> LeaseLost:
        holder = self.lost
        who = holder.describe() if holder is not None else "another driver"
        return LeaseLost(f"study {self.study.study_name!r} was taken over by {who} while this driver "
                         "stalled; this driver stopped and wrote nothing after that (what finished before "
                         f"is kept): see msatune show {self.study.study_name}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self._swap(self._record()):
                    return  # taken over while this driver stalled: never take it back
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat must not end the run
                log.warning("could not renew the lease of study %s: %s", self.study.study_name, exc)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost is not None or self._written is None:
            return
        try:
            self._swap(self._record(released=True))
        except KeyError:
            pass  # the study itself was deleted under the lease (msatune delete)
        except Exception as exc:  # noqa: BLE001 - the lease goes stale by itself
            log.warning("could not release the lease of study %s: %s", self.study.study_name, exc)
