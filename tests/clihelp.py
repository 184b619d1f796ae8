"""Run the ropestretch command in-process and capture what a user would see."""

import contextlib
import io
import signal

from ropestretch.cli import main


def run_cli(*argv):
    """Returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(result, *fragments):
    code, _, err = result
    assert code == 2, result
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def sigint_default() -> None:
    """``preexec_fn`` for a child the test interrupts: SIGINT back to its default, which Python turns
    into KeyboardInterrupt. A background job of a non-interactive shell (CI started with ``&``)
    inherits SIGINT ignored, and Python keeps an ignored SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
