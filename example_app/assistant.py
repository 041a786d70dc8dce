"""The assistant: answers each question with progress updates and a streamed answer."""

from __future__ import annotations

import logging
from typing import Any

from fastapi_busproxy import BaseWorker, BusJobRequestMessage

logger = logging.getLogger(__name__)

ANSWERS = {
    "what is the bus?": "a queue per worker, routed by target, with system messages first",
    "what crosses a link?": "only messages for the worker on the other side",
}


class Assistant(BaseWorker):
    """Starts inactive; a caller activates it before asking (see the client)."""

    def __init__(self, name: str = "assistant") -> None:
        super().__init__(name, active=False)
        self.activations = 0

    async def on_activated(self, args: dict[str, Any] | None) -> None:
        self.activations += 1
        caller = ((args or {}).get("metadata") or {}).get("caller", "someone")
        logger.info("assistant activated by %s", caller)

    async def on_job_request(self, message: BusJobRequestMessage) -> None:
        question = str((message.payload or {}).get("question", "")).strip().lower()
        answer = ANSWERS.get(question, f"I do not know {question!r} yet")
        await self.send_job_update(message.job_id, {"progress": 0.0, "note": "thinking"})
        words = answer.split()
        await self.send_job_stream_start(message.job_id, {"words": len(words)})
        for word in words:
            await self.send_job_stream_data(message.job_id, {"text": word})
        await self.send_job_update(message.job_id, {"progress": 1.0, "note": "done"})
        # The end of the stream answers the job: its data is the response.
        await self.send_job_stream_end(message.job_id, {"answer": answer, "caller": message.source})
