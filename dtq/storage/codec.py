"""MessagePack codecs, created once and reused (msgspec perf tip). No pickle anywhere."""

from __future__ import annotations

import msgspec

from dtq.models import DayStats, Schedule, Task, TaskEvent, Worker

encode = msgspec.msgpack.Encoder().encode
decode_task = msgspec.msgpack.Decoder(Task).decode
decode_worker = msgspec.msgpack.Decoder(Worker).decode
decode_day = msgspec.msgpack.Decoder(DayStats).decode
decode_counters = msgspec.msgpack.Decoder(dict[str, float]).decode
decode_event = msgspec.msgpack.Decoder(TaskEvent).decode
decode_schedule = msgspec.msgpack.Decoder(Schedule).decode
