"""Run the generate job on a Ray cluster: one actor per GPU, or CPU actors without GPUs.

Start Ray on every node first (``ray start --head`` on one, ``ray start --address
HEAD:6379`` on the others), put OUT on storage that every node mounts, then run this on
the head node or any machine that reaches it::

    python examples/ray_generate.py prompts.txt /shared/runs/a --address HEAD:6379
    python examples/ray_generate.py prompts.txt /shared/runs/a --address HEAD:6379 --resume
    python examples/ray_generate.py prompts.txt runs/a --cpu --workers 2   # local Ray, no GPU

The driver (this script) keeps the queue, shows the progress bar and prints the summary.
Each actor loads the model once and appends to OUT/manifest-ray<N>.jsonl, so a run
stopped halfway is finished by running it again with ``--resume``.
"""

from __future__ import annotations

import argparse
import sys

import safeinfer
from safeinfer.errors import JobError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", help="prompt file: .txt, .jsonl or .csv")
    parser.add_argument("out", help="output directory, shared by every node")
    parser.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    parser.add_argument("--model", help="model name, folder or Hub id (default: tiny-digits)")
    parser.add_argument("--cpu", action="store_true", help="CPU actors even where GPUs exist")
    parser.add_argument("--workers", type=int, help="actors (default: one per GPU, or 1)")
    parser.add_argument("--threads-per-worker", type=int, help="CPU threads per actor")
    parser.add_argument("--steps", type=int, help="denoising steps per image")
    parser.add_argument("--resume", action="store_true", help="finish the job in OUT")
    args = parser.parse_args()

    try:
        summary = safeinfer.generate(
            args.prompts,
            args.out,
            engine="ray",
            ray_address=args.address,
            model=args.model,
            gpus="cpu" if args.cpu else "auto",
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            steps=args.steps,
            resume=args.resume,
        )
    except JobError as error:
        if error.summary is not None:
            print(error.summary.format(), file=sys.stderr)
        print(f"ray_generate: {error}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
