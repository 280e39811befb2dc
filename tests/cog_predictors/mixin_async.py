"""An async predictor with several slots; outputs are saved from worker threads at once."""

import asyncio

from cog import BasePredictor, Input, Path
from pattern import request_image

from safeinfer.cog import SafeOutputMixin


class Predictor(BasePredictor, SafeOutputMixin):
    async def predict(
        self,
        request_id: int = Input(default=0),
        work_ms: int = Input(default=0),
    ) -> Path:
        await asyncio.sleep(work_ms / 1000)
        # A thread per call, so several saves really run at the same time.
        return await asyncio.to_thread(
            self.save_output, request_image(request_id), name=f"request-{request_id}"
        )
