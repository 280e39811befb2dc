"""The generate job against bare diffusers loops, and worker layouts against each other.

Run from the repository root::

    python -m bench.generate [--rounds 3] [--images 40] [--steps N]

The model is the embedded text-to-image pipeline ``tiny-sd`` at its native size, on the
CPU, with the pipeline's default step count unless ``--steps`` is given. Every variant
runs as its own process and is timed from start to exit, so each variant pays its own
start-up costs (imports, model loading). The comparisons:

- ``safeinfer generate`` with 1 worker of 1 thread against a bare diffusers loop on 1
  thread that calls ``image.save(path)`` after each image (target: no slower), and
  against the same loop without saving (target: at most 10 % slower);
- 2 workers of 1 thread against 1 worker of 1 thread (target: at least 1.8x the
  throughput) and against 1 worker of 2 threads (target: at least 1.1x);
- 2 workers of 1 thread against two bare loops run at once on half the prompts each,
  which is the most two processes can get from this machine: on cores shared with other
  programs, that ceiling is below 2x, and the comparison shows the job's own overhead.

Besides wall time, each run reports a steady rate: images per second after every
process finished its first image, which leaves start-up out.

Rounds are paired and interleaved: every round runs every variant once, in an order that
rotates from round to round. A ratio is the median of the per-round ratios. Outputs go to
a fresh directory under bench/_out that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from safeinfer.manifest import read_manifests

DEFAULT_ROUNDS = 3
DEFAULT_IMAGES = 40
MODEL = "tiny-sd"
OUT_DIR = Path(__file__).resolve().parent / "_out"

#: The bare loop: what a user writes without safeinfer. argv: model folder, prompts
#: file, output folder ("" to skip saving), threads, steps ("" for the default).
BARE_LOOP = """
import sys
import torch
torch.set_num_threads(int(sys.argv[4]))
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], local_files_only=True)
pipe.set_progress_bar_config(disable=True)
options = {"num_inference_steps": int(sys.argv[5])} if sys.argv[5] else {}
prompts = open(sys.argv[2]).read().split("\\n")
import time
for index, prompt in enumerate(p for p in prompts if p):
    generator = torch.Generator().manual_seed(index)
    image = pipe(prompt, generator=generator, **options).images[0]
    if sys.argv[3]:
        image.save(f"{sys.argv[3]}/{index}.png")
    print(time.time(), flush=True)
"""


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


@dataclass(frozen=True)
class Timing:
    """One run: wall seconds from start to exit, and images per second once running."""

    seconds: float
    steady: float


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{completed.stderr[-2000:]}")
    return seconds, completed.stdout


def steady_rate(finish_times: dict[str, list[float]]) -> float:
    """Return images per second after every worker finished its first image.

    Start-up (imports, model loading) differs between a bare loop and a job, and
    between one and two workers; this rate leaves it out.
    """
    start = max(min(times) for times in finish_times.values())
    later = sorted(t for times in finish_times.values() for t in times if t > start)
    return len(later) / (later[-1] - start)


class Variants:
    """The processes being compared, each a function that runs one and returns seconds."""

    def __init__(self, root: Path, prompts: Path, steps: int | None):
        from safeinfer.tiny import model_path

        self.root = root
        self.prompts = prompts
        self.steps = steps
        self.model_folder = str(model_path(MODEL))
        self.count = 0

    def fresh(self, kind: str) -> Path:
        self.count += 1
        path = self.root / f"{kind}-{self.count}"
        path.mkdir()
        return path

    def bare_pair(self) -> Timing:
        """Run two bare loops (no saving) at once, each on half the prompts."""
        prompts = [line for line in self.prompts.read_text().splitlines() if line]
        halves = []
        for index, share in enumerate((prompts[0::2], prompts[1::2])):
            path = self.root / f"half-{self.count}-{index}.txt"
            path.write_text("".join(f"{prompt}\n" for prompt in share))
            halves.append(path)
        self.count += 1
        steps = str(self.steps) if self.steps else ""
        started = time.perf_counter()
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", BARE_LOOP, self.model_folder, str(half), "", "1", steps],
                env=thread_env(1),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for half in halves
        ]
        outputs = [process.communicate()[0] for process in processes]
        seconds = time.perf_counter() - started
        if any(process.returncode != 0 for process in processes):
            raise RuntimeError("a bare loop of the pair failed")
        times = {str(index): [float(t) for t in out.split()] for index, out in enumerate(outputs)}
        return Timing(seconds, steady_rate(times))

    def bare(self, *, save: bool) -> Timing:
        out = str(self.fresh("bare")) if save else ""
        steps = str(self.steps) if self.steps else ""
        command = [sys.executable, "-c", BARE_LOOP, self.model_folder, str(self.prompts), out]
        seconds, stdout = timed([*command, "1", steps], thread_env(1))
        times = [float(line) for line in stdout.split()]
        return Timing(seconds, steady_rate({"bare": times}))

    def job(self, *, workers: int, threads: int) -> Timing:
        out = self.fresh("job")
        command = [
            sys.executable,
            "-m",
            "safeinfer",
            "generate",
            str(self.prompts),
            "--out",
            str(out),
            "--model",
            MODEL,
            "--gpus",
            "cpu",
            "--workers",
            str(workers),
            "--threads-per-worker",
            str(threads),
            "--no-progress",
        ]
        if self.steps:
            command += ["--steps", str(self.steps)]
        seconds, _ = timed(command, thread_env(threads))
        # A file's modification time is when its writer finished it.
        times: dict[str, list[float]] = {}
        for entry in read_manifests(out):
            mtime = entry.absolute_path.stat().st_mtime
            times.setdefault(str(entry.fields["worker"]), []).append(mtime)
        return Timing(seconds, steady_rate(times))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    args = parser.parse_args()

    OUT_DIR.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="generate-", dir=OUT_DIR))
    try:
        prompts = root / "prompts.txt"
        prompts.write_text("".join(f"a red fox, study {i}\n" for i in range(args.images)))
        variants = Variants(root, prompts, args.steps)
        run(variants, args.rounds, args.images)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(variants: Variants, rounds: int, images: int) -> None:
    named: dict[str, Callable[[], Timing]] = {
        "bare loop, no save": lambda: variants.bare(save=False),
        "bare loop + image.save": lambda: variants.bare(save=True),
        "2 bare loops, no save": variants.bare_pair,
        "generate 1x1": lambda: variants.job(workers=1, threads=1),
        "generate 2x1": lambda: variants.job(workers=2, threads=1),
        "generate 1x2": lambda: variants.job(workers=1, threads=2),
    }
    order = list(named)
    timings: dict[str, list[Timing]] = {name: [] for name in order}
    for round_index in range(rounds):
        shift = round_index % len(order)
        for name in order[shift:] + order[:shift]:
            timings[name].append(named[name]())
        print(f"round {round_index + 1}/{rounds} done", flush=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"{images} images of {MODEL} per run, {rounds} rounds, medians")
    print(f"  {'variant':24s} {'wall s':>8s} {'images/s':>9s} {'steady images/s':>16s}")
    for name in order:
        wall = statistics.median(timing.seconds for timing in timings[name])
        steady = statistics.median(timing.steady for timing in timings[name])
        print(f"  {name:24s} {wall:8.2f} {images / wall:9.2f} {steady:16.2f}")

    def ratios(numerator: str, denominator: str) -> tuple[float, float]:
        pairs = list(zip(timings[numerator], timings[denominator], strict=True))
        wall = statistics.median(a.seconds / b.seconds for a, b in pairs)
        steady = statistics.median(b.steady / a.steady for a, b in pairs)
        return wall, steady

    wall, steady = ratios("bare loop, no save", "2 bare loops, no save")
    print("parallel capacity of this machine: 2 bare loops vs 1 (wall, steady)")
    print(f"  {wall:.2f}x  {steady:.2f}x  (2.0 on two idle cores)")
    print("time ratios, generate / baseline (lower is better): wall, steady")
    for label, baseline, target in [
        ("1x1 / bare + save", "bare loop + image.save", "<= 1.0"),
        ("1x1 / bare, no save", "bare loop, no save", "<= 1.1"),
    ]:
        wall, steady = ratios("generate 1x1", baseline)
        print(f"  {label:22s} {wall:.3f}  {steady:.3f}  (target {target})")
    print("throughput ratios (higher is better): wall, steady")
    for label, baseline, target in [
        ("2x1 vs 1x1", "generate 1x1", ">= 1.8"),
        ("2x1 vs 1x2", "generate 1x2", ">= 1.1"),
        ("2x1 vs 2 bare loops", "2 bare loops, no save", "about 1.0"),
    ]:
        wall, steady = ratios(baseline, "generate 2x1")
        print(f"  {label:22s} {wall:.2f}x  {steady:.2f}x  (target {target})")


if __name__ == "__main__":
    main()
