"""The exit-code contract of the ``tada`` subcommands that parse their own arguments (``extract``,
``zeroshot``, ``eval-detection``): 0 done, 2 a bad option, path or value (one line on stderr, no
traceback unless ``TADA_DEBUG`` is set), 130 interrupted."""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

__all__ = ["run_command"]


def run_command(prog: str, body: Callable[[List[str]], int], argv: Optional[List[str]] = None, *,
                interrupted: str = "interrupted") -> int:
    """``body(argv)``'s exit code, with argparse exits and expected failures turned into exit codes."""
    from .distributed import DistributedError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return body(argv)
    except SystemExit as e:  # --help, or an argparse error (already printed)
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except (ValueError, OSError, DistributedError, KeyboardInterrupt) as e:
        if os.environ.get("TADA_DEBUG"):
            raise
        if isinstance(e, KeyboardInterrupt):
            print(f"{prog}: {interrupted}", file=sys.stderr)
            return 130
        print(f"{prog}: error: {' '.join(str(e).split())} (TADA_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
