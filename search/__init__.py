"""One trial and the search over many: trial configs and presets, the search space, the Ray Tune trainable, the runner (OptunaSearch + ASHA) and resume reconciliation."""
