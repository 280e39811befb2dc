"""A synchronous predictor that saves its image with the mixin."""

import time

from cog import BasePredictor, Input, Path
from pattern import request_image

from safeinfer.cog import SafeOutputMixin


class Predictor(SafeOutputMixin, BasePredictor):
    def setup(self) -> None:
        self.configure_outputs()

    def predict(
        self,
        request_id: int = Input(default=0),
        work_ms: int = Input(default=0),
    ) -> Path:
        time.sleep(work_ms / 1000)
        return self.save_output(
            request_image(request_id),
            name=f"request-{request_id}",
            metadata={"request_id": request_id},
        )
