"""``safeinfer generate``: the batch job over a prompt file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from safeinfer.errors import JobError, JobInterrupted
from safeinfer.jobs import DEFAULT_RETRIES, DEFAULT_SEED, DTYPES
from safeinfer.jobs._cluster import ENGINES

EPILOG = """\
Prompt files: .txt (one prompt per line; lines starting with # are comments),
.jsonl (objects with "prompt" and optional negative_prompt, seed, steps,
guidance, size or width and height) or .csv (a header row with the same
column names). A row's values override the options below.

Item ids are "<row>-<k>" (row counted from 0 over prompts, k the image of that
prompt), and seeds derive from --seed, the row and k, so a rerun with --resume
and every worker see the same items. Files go to OUT/<index // 1000>/ as
"<item id>-<seed>-<prompt>.png"; each worker records them in
OUT/manifest-<worker>.jsonl.

examples:
  safeinfer generate examples/prompts.txt --out outputs
  safeinfer generate prompts.jsonl --out runs/a --model ./my-pipeline --gpus 0,1
  safeinfer generate prompts.csv --out runs/a --resume
  torchrun --nproc-per-node 4 -m safeinfer generate prompts.txt --out runs/a
  safeinfer generate prompts.txt --out /shared/runs/a --engine ray --ray-address HOST:6379
"""


def register(subparsers: Any) -> None:
    """Add the ``generate`` subcommand."""
    parser = subparsers.add_parser(
        "generate",
        help="make an image for every prompt of a file, in worker processes",
        description=(
            "Run a diffusion pipeline over a prompt file in one worker per GPU (or N CPU "
            "workers), write every image atomically, record it in a manifest, and resume "
            "after a crash."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompts", metavar="PROMPTS", help="prompt file: .txt, .jsonl or .csv")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--model",
        metavar="NAME|PATH|HUB_ID",
        help="embedded model name (default: tiny-digits), a folder written by "
        "save_pretrained, or a Hugging Face Hub id",
    )
    parser.add_argument(
        "--gpus",
        metavar="IDS",
        help="comma-separated GPU ids, 'auto' (default: every visible GPU, else the CPU) or 'cpu'",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes (default: one per GPU, or 1 on the CPU)",
    )
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        metavar="N",
        help="CPU threads per worker (default: an even share of the cores). Part of what "
        "makes CPU output reproducible: keep it fixed to get identical images",
    )
    parser.add_argument("--steps", type=int, metavar="N", help="denoising steps per image")
    parser.add_argument("--guidance", type=float, metavar="SCALE", help="guidance scale")
    parser.add_argument("--negative-prompt", metavar="TEXT", help="negative prompt for every row")
    parser.add_argument("--size", metavar="WxH", help="image size in pixels, for example 512x512")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        metavar="N",
        help=f"base seed of the job (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--images-per-prompt",
        type=int,
        default=1,
        metavar="N",
        help="images per prompt (default: 1)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1,
        metavar="N",
        help="prompts per pipeline call (default: 1)",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the model's)")
    parser.add_argument(
        "--scheduler", metavar="CLASS", help="diffusers scheduler class, for example DDIMScheduler"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the job in DIR: skip items whose file matches the manifest",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="extra attempts for a failed item, and worker deaths an item may survive "
        f"(default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="load a Hub model from the local Hugging Face cache only",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="'local': worker processes on this host, or one worker per rank under "
        "torchrun, Accelerate, srun or MPI (default); 'ray': actors on a Ray cluster",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="Ray cluster to connect to with --engine ray, for example 10.0.0.5:6379 "
        "(default: RAY_ADDRESS, a running local cluster, or a new local instance)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the job and print its summary; return 0, 1 when items failed, 128+N on signal N."""
    from safeinfer.jobs import generate

    try:
        summary = generate(
            args.prompts,
            args.out,
            model=args.model,
            gpus=args.gpus,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            steps=args.steps,
            guidance=args.guidance,
            negative_prompt=args.negative_prompt,
            size=args.size,
            seed=args.seed,
            images_per_prompt=args.images_per_prompt,
            batch_size=args.batch_size,
            dtype=args.dtype,
            scheduler=args.scheduler,
            resume=args.resume,
            retries=args.retries,
            local_files_only=args.offline,
            progress=not args.no_progress,
            engine=args.engine,
            ray_address=args.ray_address,
        )
    except JobInterrupted as error:
        if error.summary is not None:
            print(error.summary.format(), file=sys.stderr)
        return 128 + error.signal
    except JobError as error:
        if error.summary is not None:
            print(error.summary.format(), file=sys.stderr)
        print(f"safeinfer generate: {error}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0
