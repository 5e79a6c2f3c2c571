"""Reading TensorBoard event files without TensorFlow (what Ray's TBX logger wrote), for tests."""

from __future__ import annotations

import struct
from pathlib import Path


def read_event_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of a TensorBoard event file (TFRecord framing, no TF needed)."""
    from tensorboardX.proto import event_pb2

    data = Path(path).read_bytes()
    out: dict[str, list[tuple[int, float]]] = {}
    i = 0
    while i + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        i += 12  # length + its CRC
        event = event_pb2.Event()
        event.ParseFromString(data[i:i + n])
        i += n + 4  # payload + its CRC
        for v in event.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((int(event.step), float(v.simple_value)))
    return out
