"""The ``tada`` command. Thin: parses arguments and calls the library."""
from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional


def _env(_: argparse.Namespace) -> int:
    import torch

    import tada

    print(f"tada        {tada.__version__}")
    print(f"python      {platform.python_version()}")
    print(f"torch       {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"cuda        {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    print(f"platform    {platform.platform()}  {platform.processor() or platform.machine()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import tada

    parser = argparse.ArgumentParser(prog="tada", description="Temporally-adaptive video models.")
    parser.add_argument("--version", action="version", version=f"tada {tada.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = sub.add_parser("env", help="print versions of tada, torch and the machine it runs on")
    env.set_defaults(func=_env)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
