"""The service front door: the study store, the CLI (``msatune ...``), dashboard and reports."""
