"""``python -m msatune.studies.cli``: the ``msatune`` command."""

import sys

from msatune.studies.cli.app import main

sys.exit(main())
