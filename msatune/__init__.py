"""msatune: hyperparameter search and ensembling for TensorFlow 2 multimodal sentiment analysis.

Everything installs under this one package: ``msatune.augment`` (data in), ``msatune.models``
(the Keras models and the training recipe), ``msatune.search`` (one trial, the search),
``msatune.ensemble`` and ``msatune.studies`` (store, CLI, dashboard, reports). In the repository
they are the top-level folders of the same names (see DESIGN.md), so they never collide with a
user's own ``models/`` or ``utils/`` packages.

``import msatune`` is enough to load msatune's ``.keras`` files: its Keras classes are registered
as soon as Keras is imported (:mod:`msatune.keras_objects`), without importing TensorFlow here.
"""

from msatune.errors import UserError
from msatune.keras_objects import register_when_keras_loads

__version__ = "0.1.0"
#: The architecture's subpackages (``msatune.<name>``), in dependency order.
SUBPACKAGES: tuple[str, ...] = ("augment", "models", "search", "ensemble", "studies")
__all__ = ["SUBPACKAGES", "UserError", "__version__"]

register_when_keras_loads()
