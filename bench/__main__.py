"""Run every benchmark module in bench/, or the ones named: ``python -m bench [names]``.

Each module runs in its own interpreter, so one benchmark's imports, threads and caches
cannot change the next one's figures. The exit code is 1 when any module failed.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    """Return the benchmark module names, sorted; private modules are left out."""
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(BENCH_DIR)])
        if not module.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"modules to run (default: all of {names})"
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {names}")

    failed: list[str] = []
    for name in args.names or names:
        print(f"== bench.{name} ==", flush=True)
        completed = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"], cwd=BENCH_DIR.parent, check=False
        )
        if completed.returncode != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
