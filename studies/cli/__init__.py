"""The ``msatune`` command line: one module per command group, named after its commands.

:mod:`.app` is the ``msatune`` group (global options, the one-line error contract, the command
list); :mod:`.context` is what every command shares (workspace, store and resource options, JSON
and stderr lines) and :mod:`.render` the renderers several commands use, with the one number
formatter. Each command module parses, calls one library function and renders what it returns.
Nothing outside this package imports it.
"""

from msatune.studies.cli.app import main

__all__ = ["main"]
