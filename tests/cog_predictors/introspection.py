"""The mixin in each position of the bases, with run() and the older predict().

Each class returns a JSON file with its name and the inputs it received, so a test can
check that omitted inputs got their Input(default=...) values.
"""

import json

from cog import BasePredictor, BaseRunner, Input, Path

from safeinfer.cog import SafeOutputMixin


def _report(runner: SafeOutputMixin, request_id: int, label: str, scale: float) -> Path:
    inputs = {"request_id": request_id, "label": label, "scale": scale}
    with runner.open_output(".json", name=type(runner).__name__) as output:
        output.file.write(json.dumps({"class": type(runner).__name__, "inputs": inputs}).encode())
    return output.path


class MixinFirstRunner(SafeOutputMixin, BaseRunner):
    def run(
        self,
        request_id: int = Input(default=7),
        label: str = Input(default="fallback"),
        scale: float = Input(default=0.5),
    ) -> Path:
        return _report(self, request_id, label, scale)


class MixinLastRunner(BaseRunner, SafeOutputMixin):
    def run(
        self,
        request_id: int = Input(default=7),
        label: str = Input(default="fallback"),
        scale: float = Input(default=0.5),
    ) -> Path:
        return _report(self, request_id, label, scale)


class MixinFirstPredictor(SafeOutputMixin, BasePredictor):
    def predict(
        self,
        request_id: int = Input(default=7),
        label: str = Input(default="fallback"),
        scale: float = Input(default=0.5),
    ) -> Path:
        return _report(self, request_id, label, scale)


class MixinLastPredictor(BasePredictor, SafeOutputMixin):
    def predict(
        self,
        request_id: int = Input(default=7),
        label: str = Input(default="fallback"),
        scale: float = Input(default=0.5),
    ) -> Path:
        return _report(self, request_id, label, scale)
