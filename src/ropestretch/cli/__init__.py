"""The ``ropestretch`` command: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ropestretch import __version__
from ropestretch.errors import UsageError

# Subcommand modules, each with add_parser(subparsers) and run(args) -> int.
_COMMANDS = ["rope", "apply", "gguf", "positions", "train", "pretrain", "eval", "report", "study", "demo"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``ropestretch CMD: error: ...`` and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="ropestretch", description="Extend the context window of pre-trained RoPE language models.")
    parser.add_argument("--version", action="version", version=f"ropestretch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(f"ropestretch.cli.{name}_cmd").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UsageError as err:
        print(f"ropestretch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ropestretch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a full disk, a quota, a read-only volume while writing: one line, what is left
        import errno

        short = err.errno is None and " requested and " in str(err) and "written" in str(err)  # numpy's short write
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO) and not short:
            raise
        what = f"a write came up short ({err}): is the disk full?" if short else err.strerror
        where = f" writing {err.filename}" if err.filename else ""
        left = getattr(args, "left_on_write_error", "")
        print(f"ropestretch {args.command}: error: {what}{where}" + (f"; {left}" if left else ""), file=sys.stderr)
        return 2


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a one-line message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
