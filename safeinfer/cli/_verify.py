"""``safeinfer verify``: check PNG files, trees of them, and the files that manifests list."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safeinfer.cli import EXIT_FAILURES, EXIT_OK, EXIT_USAGE
from safeinfer.errors import ConfigError, ManifestError
from safeinfer.png._limits import DEFAULT_LIMITS
from safeinfer.png._report import PngReport
from safeinfer.png._scan import (
    DEFAULT_PATTERN,
    VerifyTask,
    iter_files,
    name_matches,
    run_tasks,
)
from safeinfer.png._verify import DEFAULT_LEVEL, LEVELS

if TYPE_CHECKING:
    from safeinfer.manifest import ManifestEntry

EPILOG = """\
exit status: 0 when every file is fine, 1 when a file is corrupt, over a limit,
missing from its manifest entry's place or different from it, or when an entry's
path leads out of its manifest's folder (that file is never read), 2 on usage
errors, when a path or manifest cannot be read, or when nothing matched.

The full level (the default) also inflates the image data; structure checks
the chunks only and is several times faster. Put PATHs before --manifest, or
repeat --manifest for each file: it takes every argument that follows it.

examples:
  safeinfer verify outputs/
  safeinfer verify --level structure --jobs 8 /data/images
  safeinfer verify --json outputs/ > report.jsonl
  safeinfer verify --manifest outputs/manifest-0.jsonl outputs/manifest-1.jsonl
  safeinfer verify --manifest outputs/        # every manifest*.jsonl in outputs/
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid count {value}: expected 1 or more")
    return value


def register(subparsers: Any) -> None:
    """Add the ``verify`` subcommand."""
    parser = subparsers.add_parser(
        "verify",
        help="check PNG files for corruption, and files against their manifests",
        description=(
            "Check every PNG under the given paths: CRCs, chunk rules, and (at the full "
            "level) the complete image data. With --manifest, also check that every listed "
            "file exists and has the recorded size and SHA-256."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="PNG files or directories")
    parser.add_argument(
        "--level",
        choices=LEVELS,
        default=DEFAULT_LEVEL,
        help=f"how deep to check (default: {DEFAULT_LEVEL})",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: one per core)",
    )
    parser.add_argument(
        "--pattern",
        default=DEFAULT_PATTERN,
        metavar="GLOB",
        help=f"file names to check inside directories, ignoring case (default: {DEFAULT_PATTERN})",
    )
    parser.add_argument(
        "--manifest",
        nargs="+",
        action="extend",
        default=[],
        metavar="FILE",
        help="manifest files, or directories whose manifest*.jsonl files are read",
    )
    parser.add_argument(
        "--json", action="store_true", help="write one JSON object per file to standard output"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar, problem lines or summary; only the exit status (and --json)",
    )
    parser.set_defaults(handler=run)


@dataclass
class _Tally:
    files: int = 0
    failed: int = 0
    unreadable: int = 0

    def add(self, report: PngReport) -> None:
        self.files += 1
        if any(problem.kind == "io" for problem in report.problems):
            self.unreadable += 1
        elif not report.ok:
            self.failed += 1

    def exit_code(self) -> int:
        if self.unreadable:
            return EXIT_USAGE
        return EXIT_FAILURES if self.failed else EXIT_OK

    def summary(self) -> str:
        ok = self.files - self.failed - self.unreadable
        return (
            f"checked {self.files} file(s): {ok} ok, {self.failed} with problems, "
            f"{self.unreadable} unreadable"
        )


def run(args: argparse.Namespace) -> int:
    """Check the files and print the results; return the exit code."""
    if not args.paths and not args.manifest:
        print("safeinfer verify: error: give at least one PATH or --manifest FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        manifest_tasks = _manifest_tasks(args.manifest, args.pattern)
    except OSError as error:
        print(f"safeinfer verify: error: cannot read manifest: {error}", file=sys.stderr)
        return EXIT_USAGE
    tasks = _merge_tasks(iter_files(args.paths, pattern=args.pattern), manifest_tasks)
    reports = run_tasks(tasks, level=args.level, jobs=args.jobs, limits=DEFAULT_LIMITS)
    tally = _Tally()
    for report in _with_progress(reports, quiet=args.quiet):
        tally.add(report)
        if args.json:
            print(json.dumps(report.to_dict()), flush=False)
        elif not args.quiet and not report.ok:
            _print_problems(report)
    sys.stdout.flush()
    if tally.files == 0:
        # An empty run that passed would hide a typo in a path or a --pattern.
        print(f"safeinfer verify: error: {_nothing_checked(args)}", file=sys.stderr)
        return EXIT_USAGE
    if not args.quiet:
        print(f"safeinfer verify: {tally.summary()}", file=sys.stderr)
    return tally.exit_code()


def _nothing_checked(args: argparse.Namespace) -> str:
    parts = []
    if args.paths:
        parts.append(f"no files matched --pattern {args.pattern!r} in {', '.join(args.paths)}")
    if args.manifest:
        parts.append(f"the manifests list no files: {', '.join(args.manifest)}")
    return "; ".join(parts)


def _merge_tasks(paths: Iterable[str], manifest_tasks: list[VerifyTask]) -> Iterator[VerifyTask]:
    """Yield one task per file: PATHs in walk order, then the manifests' other entries.

    Files are keyed by their resolved path, so a file reached as a PATH and through a
    manifest (or twice as a PATH, or in two manifests) is read once. Its report contains
    the PNG check and the manifest's size and hash check together.
    """
    by_real_path: dict[str, VerifyTask] = {}
    escaped: list[VerifyTask] = []
    for task in manifest_tasks:
        if task.escape is not None:
            escaped.append(task)
        else:
            by_real_path.setdefault(os.path.realpath(task.path), task)
    # NOTE: the set of resolved paths grows with the number of files checked, about
    # 100 bytes per file.
    seen: set[str] = set()
    for path in paths:
        real_path = os.path.realpath(path)
        if real_path in seen:
            continue
        seen.add(real_path)
        entry_task = by_real_path.get(real_path)
        if entry_task is None:
            yield VerifyTask(path)
        else:
            # A PATH is checked as a PNG whatever its name, like any PATH.
            yield dataclasses.replace(entry_task, path=path, check_png=True)
    for real_path, task in by_real_path.items():
        if real_path not in seen:
            yield task
    yield from escaped


def _manifest_tasks(manifests: list[str], pattern: str) -> list[VerifyTask]:
    if not manifests:
        return []
    from safeinfer.manifest import MANIFEST_GLOB, find_manifests, read_manifests

    for source in manifests:
        if os.path.isdir(source) and not find_manifests(source):
            raise ConfigError(
                f"no {MANIFEST_GLOB} in {source}: give a folder that a job wrote its "
                "manifests to, or the manifest files themselves"
            )
    return [_entry_task(entry, pattern) for entry in read_manifests(manifests)]


def _entry_task(entry: ManifestEntry, pattern: str) -> VerifyTask:
    try:
        path = entry.absolute_path
    except ManifestError:
        folder = entry.manifest.parent
        return VerifyTask(
            str(folder / entry.path),
            escape=f"path escapes the manifest folder {folder} ({entry.manifest}, line "
            f"{entry.line}); the file was not read",
        )
    return VerifyTask(
        str(path),
        expected_bytes=entry.bytes,
        expected_sha256=entry.sha256,
        check_png=name_matches(os.path.basename(entry.path), pattern),
    )


def _with_progress(reports: Iterator[PngReport], *, quiet: bool) -> Iterator[PngReport]:
    # The bar goes to standard error and only on a terminal, so pipes and CI logs stay clean.
    if quiet or not sys.stderr.isatty():
        yield from reports
        return
    from tqdm.auto import tqdm

    with tqdm(reports, unit=" files", desc="verify", file=sys.stderr) as bar:
        for report in bar:
            if not report.ok:
                bar.set_postfix_str(f"{report.path}: {report.problems[0].code}", refresh=False)
            yield report


def _print_problems(report: PngReport) -> None:
    for problem in report.problems:
        print(f"{report.path}: {problem.code}: {problem.message}")
