"""Command line of the ops package: `python -m stylegan2_ops doctor [--build]`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stylegan2_ops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="report the toolchain, the GPU and which implementation each op uses")
    doctor.add_argument("--build", action="store_true",
                        help="force a JIT build of the kernels now and show the compiler's error if it fails")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from .doctor import run

        return run(build=args.build)
    return 2


if __name__ == "__main__":
    sys.exit(main())
