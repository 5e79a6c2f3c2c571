"""The ``msatune`` group: global options, error rendering, and the list of commands.

Each command lives in the ``studies/cli/`` module named after it and is registered here. Commands
import their heavy dependencies (TensorFlow, Ray) lazily, so ``msatune --help`` stays instant.

Error contract: a :class:`msatune.errors.UserError` (or a usage mistake caught by click) prints one
line ``msatune: error: ...`` to stderr and exits 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import threading
from pathlib import Path

import click

from msatune import __version__
from msatune.errors import UserError
from msatune.stop_signals import SIGTERM_EXIT, sigterm_as_ctrl_c, terminated
from msatune.studies.cli.context import DEFAULT_WORKSPACE, WORKSPACE_ENV, AppContext

HELP = f"""msatune: hyperparameter search and ensembling for TF2 multimodal sentiment models.

\b
Start here:
  msatune demo                          synthetic data -> small study -> ensemble
  msatune data synth DIR --preset mosi  make a MOSI-like dataset (msa-tf2 HDF5 layout)
  msatune data info DIR                 check a dataset, see its constant-predictor MAE
  msatune train --preset improved       train one configuration
  msatune analyze LOG.csv               the overfitting story of a Keras CSV log
  msatune launch NAME --data DIR        run a search (Ray Tune + Optuna TPE + ASHA)
  msatune resume NAME                   continue after a crash or Ctrl-C
  msatune refit NAME --top-k K          retrain the best trials at other seeds (--folds F: on folds)
  msatune show NAME                     a study's trials (--state fail: failures and why)
  msatune ensemble NAME                 combine the best trials into one model (--from refit: bagged)
  msatune report NAME                   report.html: criteria, history, curves, importance
  msatune dashboard                     open optuna-dashboard over the study store
  msatune export NAME --out F.csv       every trial with its full config
  msatune delete NAME                   remove a study (--files: its directory too)
  msatune space --example               the default search space as a --space file

Everything a study writes (store, checkpoints, Ray results, ensembles, reports) goes under the
workspace: --workspace DIR, or ${WORKSPACE_ENV}, default {DEFAULT_WORKSPACE}.
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    envvar=WORKSPACE_ENV,
    default=DEFAULT_WORKSPACE,
    show_default=True,
    help=f"Directory for stores, checkpoints and reports (env {WORKSPACE_ENV}).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--verbose", "-v", is_flag=True, help="More output (e.g. Ray's own progress tables).")
@click.version_option(__version__, "--version", prog_name="msatune")
@click.pass_context
def cli(ctx: click.Context, workspace: str, debug: bool, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = AppContext(workspace=checked_workspace(workspace), debug=debug, verbose=verbose)


def checked_workspace(workspace: str) -> Path:
    """The workspace as an absolute path; a UserError for an empty name, or a path under a regular
    file (no command could create or read it), before any command looks at it."""
    if not workspace.strip():
        raise UserError(f"--workspace (or ${WORKSPACE_ENV}) is empty; give a directory, e.g. "
                        f"--workspace {DEFAULT_WORKSPACE}")
    path = Path(workspace).expanduser().resolve()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--workspace {workspace}: {parent} is a file, not a directory; "
                                "choose another workspace directory")
            break
    return path


def _register() -> None:
    """Attach every command module; each defines its commands next to the code it drives."""
    import importlib

    for module_name, attr in COMMANDS:
        cli.add_command(getattr(importlib.import_module(module_name), attr))


# (module, click command object) pairs; order is the order in --help.
COMMANDS: list[tuple[str, str]] = [
    ("msatune.studies.cli.demo", "demo"),
    ("msatune.studies.cli.data", "data"),
    ("msatune.studies.cli.train", "train"),
    ("msatune.studies.cli.analyze", "analyze"),
    ("msatune.studies.cli.launch", "launch"),
    ("msatune.studies.cli.launch", "resume"),
    ("msatune.studies.cli.show", "studies"),
    ("msatune.studies.cli.show", "show"),
    ("msatune.studies.cli.refit", "refit"),
    ("msatune.studies.cli.export", "export"),
    ("msatune.studies.cli.delete", "delete"),
    ("msatune.studies.cli.space", "space"),
    ("msatune.studies.cli.ensemble", "ensemble"),
    ("msatune.studies.cli.predict", "predict"),
    ("msatune.studies.cli.dashboard", "dashboard"),
    ("msatune.studies.cli.report", "report"),
]

_register()


# click 8.2 raises this for a bare group (help printed, exit 0); older click prints help itself.
_NO_ARGS_IS_HELP: type[BaseException] = getattr(
    click.exceptions, "NoArgsIsHelpError", getattr(click.exceptions, "NoArgsIsHelp", ())
) or ()


def _wants_debug(argv: list[str]) -> bool:
    return "--debug" in argv


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: run the CLI and turn errors into one line + exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    native_filter = None if _wants_debug(args) else NativeStderrFilter()
    with sigterm_as_ctrl_c(before_hard_exit=native_filter.restore if native_filter else None):
        if native_filter is None:
            rc = _main(args, debug=True)
        else:
            with native_filter:
                rc = _main(args, debug=False)
        # stopped by SIGTERM (Slurm, systemd, Kubernetes, kill): the status a shell gives it
        return SIGTERM_EXIT if rc == 130 and terminated() else rc


#: What TensorFlow's C++ runtime prints on import whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21):
#: absl's pre-init notice, oneDNN and CPU-feature notes, "no CUDA driver" on CPU machines.
_NATIVE_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]0000 \d|E0000 \d.*(cuInit|cuda|CUDA)"
    r"|To enable the following instructions: .*rebuild TensorFlow)"
)


class NativeStderrFilter:
    """Drop TensorFlow's native start-up chatter from fd 2; everything else passes through.

    Library logs, warnings and ``msatune: error:`` lines are untouched, so a user error stays one
    line even after TensorFlow was imported. ``--debug`` bypasses the filter.
    """

    _saved: int | None = None

    def __enter__(self) -> NativeStderrFilter:
        self._saved, self._restored = None, False
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            read_end, write_end = os.pipe()
            os.dup2(write_end, 2)
            os.close(write_end)
        except OSError:  # no usable fd 2: run unfiltered
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._pump, args=(read_end,), daemon=True)
        self._thread.start()
        return self

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as stream:
            for line in stream:
                if not _NATIVE_NOISE.match(line.decode("utf-8", "replace")):
                    os.write(self._saved, line)

    def restore(self, wait_s: float = 2.0) -> None:
        """fd 2 is the real stderr again (what the pump holds still passes, for up to ``wait_s``)."""
        if self._saved is None or self._restored:
            return
        self._restored = True
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # our write end closes; the pump ends when children let go too
        self._thread.join(timeout=wait_s)

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        self.restore()
        os.close(self._saved)


def _main(args: list[str], debug: bool) -> int:
    try:
        rv = cli.main(args=args, prog_name="msatune", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        click.echo(f"msatune: error: {exc}", err=True)
        return exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # click >= 8.2: a group called without a command
        click.echo(exc.ctx.get_help() if exc.ctx else "")
        return 0
    except click.UsageError as exc:
        if debug:
            raise
        hint = ""
        if exc.ctx is not None:
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"msatune: error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.Abort:
        click.echo("msatune: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("msatune: stopped (SIGTERM)" if terminated() else "msatune: interrupted", err=True)
        return 130
    except Exception as exc:
        message = environment_failure(exc)
        if message is None or debug:
            raise
        click.echo(f"msatune: error: {message}", err=True)
        return 2
    return rv if isinstance(rv, int) else 0


#: errno values of "the disk (or the file size limit) is full": the user frees space and retries.
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def environment_failure(exc: BaseException) -> str | None:
    """One line for a failure of what a command stands on (a full disk, a damaged or unreachable
    study store) that surfaced past the command's own checks; ``None`` for a bug (traceback)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"{os.strerror(exc.errno).lower()}{where}; free space (or raise the file size limit) "
                "and run the command again (nothing finished is lost)")
    store_errors = []
    if "optuna" in sys.modules:
        store_errors.append(sys.modules["optuna"].exceptions.StorageInternalError)
    if "sqlalchemy" in sys.modules:
        store_errors.append(sys.modules["sqlalchemy"].exc.OperationalError)
        store_errors.append(sys.modules["sqlalchemy"].exc.DatabaseError)
    if store_errors and isinstance(exc, tuple(store_errors)):
        from msatune.studies.store.connect import store_failure

        return f"the study store failed: {store_failure(exc)}"
    return None
