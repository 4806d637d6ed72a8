"""Metric writers: grouped keys keep their TensorBoard group (eval/, time/), the rest go under train/."""

import struct

from llada_jax.training.metrics import MetricWriter, read_metrics


def _tensorboard_scalars(directory):
    """(tag, step, value) of every scalar in the event files below `directory` (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(directory.glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = Event.FromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_grouped_keys_keep_their_tensorboard_group(tmp_path):
    writer = MetricWriter(tmp_path, tensorboard=True)
    writer.write(10, {"loss": 1.5, "mfu": None, "time/data": 0.25})
    writer.write(10, {"eval/loss": 2.5})
    writer.close()
    assert read_metrics(tmp_path) == [{"step": 10, "loss": 1.5, "time/data": 0.25}, {"step": 10, "eval/loss": 2.5}]
    assert sorted(_tensorboard_scalars(tmp_path / "tb")) == [("eval/loss", 10, 2.5), ("time/data", 10, 0.25),
                                                             ("train/loss", 10, 1.5)]
