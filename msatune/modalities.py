"""The three modalities of every msatune dataset and model, in the order inputs are named."""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("text", "audio", "video")
