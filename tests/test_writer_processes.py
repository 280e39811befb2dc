"""Several real writer processes at once, and writers killed with SIGKILL mid-write."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safeinfer.writer import clean_stale_temps
from safeinfer.writer._temps import parse_temp_name

pytestmark = pytest.mark.slow

#: Defines image(writer, index): a small image whose pixels depend on both numbers. It runs
#: in the writer processes and here, so the test can list every image that may appear.
IMAGE_CODE = textwrap.dedent(
    """
    import numpy as np

    def image(writer, index, size=16):
        rng = np.random.default_rng(writer * 100_003 + index)
        return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    """
)

UNIQUE_WRITER = IMAGE_CODE + textwrap.dedent(
    """
    import json, sys
    from safeinfer.writer import save_png
    directory, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    for index in range(count):
        result = save_png(image(writer, index), directory, name=f"w{writer}", durability="none")
        print(json.dumps([str(result.path), result.sha256, writer, index]), flush=True)
    """
)

REPLACE_WRITER = IMAGE_CODE + textwrap.dedent(
    """
    import sys
    from safeinfer.writer import save_png
    target, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for round in range(count):
        save_png(image(writer, round % 20, 64), target, if_exists="replace", durability="none")
    """
)

POLLING_READER = IMAGE_CODE + textwrap.dedent(
    """
    import hashlib, io, json, os, sys
    from PIL import Image
    target, stop_file = sys.argv[1], sys.argv[2]
    known = {
        hashlib.sha256(image(writer, index, 64).tobytes()).hexdigest()
        for writer in (0, 1) for index in range(20)
    }
    reads = missing = bad = 0
    print("ready", flush=True)
    while not os.path.exists(stop_file) and reads < 100_000:
        try:
            with open(target, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            missing += 1
            continue
        reads += 1
        try:
            pixels = Image.open(io.BytesIO(data)).convert("RGB").tobytes()
        except Exception:
            bad += 1
            continue
        if hashlib.sha256(pixels).hexdigest() not in known:
            bad += 1
    print(json.dumps({"reads": reads, "missing": missing, "bad": bad}), flush=True)
    """
)

LOOPING_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from safeinfer.writer import atomic_write
    target = sys.argv[1]
    images = [Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()]
    print("ready", flush=True)
    index = 0
    while True:
        atomic_write(target, images[index % 2], if_exists="replace", durability="file")
        index += 1
    """
)

HOLDING_WRITER = textwrap.dedent(
    """
    import sys
    from safeinfer.writer import atomic_open
    with atomic_open(sys.argv[1], durability="none") as file:
        file.write(b"first half ")
        file.flush()
        print(file.temp_path, flush=True)
        sys.stdin.readline()
        file.write(b"second half")
    """
)


def python(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def expected_image(writer: int, index: int, size: int = 16) -> np.ndarray:
    namespace: dict[str, object] = {}
    exec(IMAGE_CODE, namespace)
    result: np.ndarray = namespace["image"](writer, index, size)  # type: ignore[operator]
    return result


def test_four_processes_unique_names(tmp_path: Path) -> None:
    writers = [python(UNIQUE_WRITER, tmp_path, writer, 250) for writer in range(4)]
    try:
        for process in writers:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in writers:  # start all four together
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=120)[0] for process in writers]
    finally:
        for process in writers:
            process.kill()
    assert [process.returncode for process in writers] == [0, 0, 0, 0]

    records = [json.loads(line) for output in outputs for line in output.splitlines()]
    assert len(records) == 1000
    paths = [Path(path) for path, _, _, _ in records]
    assert len(set(paths)) == 1000, "a name was reused"
    assert sorted(os.listdir(tmp_path)) == sorted(path.name for path in paths)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path)), "temp file left"

    for path, sha256, writer, index in records:
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
        decoded = np.asarray(Image.open(io.BytesIO(data)))
        assert np.array_equal(decoded, expected_image(writer, index)), path
        assert Path(path).name.endswith(f"-w{writer}.png")


def test_replace_with_polling_reader(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    stop_file = tmp_path / "stop"
    reader = python(POLLING_READER, target, stop_file)
    writers: list[subprocess.Popen[str]] = []
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        writers = [python(REPLACE_WRITER, target, writer, 150) for writer in (0, 1)]
        for process in writers:
            process.communicate(timeout=120)
        stop_file.touch()
        report = json.loads(reader.communicate(timeout=60)[0])
    finally:
        for process in [reader, *writers]:
            process.kill()
    assert [process.returncode for process in writers] == [0, 0]
    assert report["bad"] == 0
    assert report["reads"] > 0
    assert sorted(os.listdir(tmp_path)) == ["out.png", "stop"]


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    images = [png_bytes(1), png_bytes(2)]
    sources = [tmp_path / "a.png", tmp_path / "b.png"]
    for source, data in zip(sources, images, strict=True):
        source.write_bytes(data)
    target = outputs / "image.png"
    randomizer = random.Random(20261204)

    holder = python(HOLDING_WRITER, outputs / "live.png")
    killed: set[int] = set()
    try:
        assert holder.stdout is not None
        live_temp = Path(holder.stdout.readline().strip())
        for _ in range(50):
            writer = python(LOOPING_WRITER, target, *sources)
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "ready"
            with contextlib.suppress(subprocess.TimeoutExpired):
                writer.wait(timeout=randomizer.uniform(0.0, 0.04))
            writer.send_signal(signal.SIGKILL)
            writer.wait(timeout=30)
            assert writer.returncode == -signal.SIGKILL
            killed.add(writer.pid)
            if target.exists():
                assert target.read_bytes() in images, "a partial or mixed file was published"

        temps = {path for path in outputs.iterdir() if parse_temp_name(path)}
        dead = {path for path in temps if parse_temp_name(path).owner.pid in killed}  # type: ignore[union-attr]
        assert temps == dead | {live_temp}
        assert dead, "no kill landed inside a write; the test did not exercise cleanup"

        removed = clean_stale_temps(tmp_path)
        assert set(removed) == dead
        assert live_temp.exists()
        assert {path for path in outputs.iterdir() if parse_temp_name(path)} == {live_temp}

        assert holder.stdin is not None
        holder.stdin.write("finish\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    finally:
        holder.kill()
    assert holder.returncode == 0
    assert (outputs / "live.png").read_bytes() == b"first half second half"
    assert sorted(os.listdir(outputs)) == ["image.png", "live.png"]
    Image.open(target).verify()
