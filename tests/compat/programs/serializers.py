"""A ``MessageSerializer`` subclass that implements only ``serialize``/``deserialize`` can be
instantiated and used (one that leaves ``deserialize`` out cannot), and
``JSONMessageSerializer`` round-trips job messages.
"""

from __future__ import annotations

import json

from fastapi_busproxy import (
    BusEndMessage,
    BusJobRequestMessage,
    BusJobResponseMessage,
    JobStatus,
    JSONMessageSerializer,
    MessageSerializer,
)


class EndOnlySerializer(MessageSerializer):
    """Carries ``BusEndMessage`` only, as JSON."""

    def serialize(self, message):
        return json.dumps({"source": message.source, "reason": message.reason}).encode()

    def deserialize(self, data):
        fields = json.loads(data)
        return BusEndMessage(source=fields["source"], reason=fields["reason"])


class HalfSerializer(MessageSerializer):
    def serialize(self, message):
        return b""


def fields(message) -> dict:
    names = ("source", "target", "job_id", "job_name", "payload", "status", "response", "reason")
    seen = {name: getattr(message, name) for name in names if hasattr(message, name)}
    return {"type": type(message).__name__, **seen}


async def main() -> dict:
    outcome: dict = {}
    mine = EndOnlySerializer()
    outcome["is_a_message_serializer"] = isinstance(mine, MessageSerializer)
    data = mine.serialize(BusEndMessage(source="a", reason="bye"))
    outcome["own_bytes"] = isinstance(data, bytes)
    outcome["own_round_trip"] = fields(mine.deserialize(data))
    try:
        HalfSerializer()
        outcome["half_serializer"] = "instantiated"
    except TypeError:
        outcome["half_serializer"] = "TypeError"

    serializer = JSONMessageSerializer()
    request = BusJobRequestMessage(
        source="a", target="b", job_id="j1", job_name="add", payload={"xs": [1, 2.5, "3"]}
    )
    response = BusJobResponseMessage(
        source="b", target="a", job_id="j1", status=JobStatus.FAILED, response={"why": None}
    )
    for key, message in (("request", request), ("response", response)):
        data = serializer.serialize(message)
        restored = serializer.deserialize(data)
        outcome[key] = {"bytes": isinstance(data, bytes), "restored": fields(restored)}
    restored = serializer.deserialize(serializer.serialize(response))
    outcome["restored_status_equals_job_status"] = restored.status == JobStatus.FAILED
    return outcome
