"""msatune: hyperparameter search and ensembling for TensorFlow 2 multimodal sentiment analysis.

This package holds only what every layer shares: the version and the user-error type.
The architecture lives in the top-level packages ``augment``, ``models``, ``search``,
``ensemble`` and ``studies`` (see DESIGN.md).
"""

from msatune.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
