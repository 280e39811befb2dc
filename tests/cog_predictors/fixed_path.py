"""The broken pattern the mixin replaces: every server writes one shared fixed path.

The path comes from SAFEINFER_TEST_SHARED_OUTPUT, so two servers share it like two
servers on one host share /tmp/out.png.
"""

import os
import time

from cog import BasePredictor, Input, Path
from pattern import request_image
from PIL import Image

#: Seconds between writing the file and returning it, like a predictor that logs or
#: cleans up before it returns; another server can overwrite the file meanwhile.
DELAY_BEFORE_RETURN = 0.002


class Predictor(BasePredictor):
    def predict(self, request_id: int = Input(default=0)) -> Path:
        path = os.environ["SAFEINFER_TEST_SHARED_OUTPUT"]
        Image.fromarray(request_image(request_id)).save(path)
        time.sleep(DELAY_BEFORE_RETURN)
        return Path(path)
