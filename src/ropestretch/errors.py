"""The one exception type for user mistakes."""


class UsageError(ValueError):
    """A mistake in what the user asked for (a length, a name, a file).

    The library raises it with a message that says what is wrong and what would be right;
    the command line prints that message as one line and exits with code 2.
    """


def first_line(err: BaseException) -> str:
    """An error's message as one line of at most 200 characters (its type's name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def root_cause(err: BaseException) -> str:
    """:func:`first_line` of the innermost error of a chain (datasets, for one, wraps the reason in
    "An error occurred while generating the dataset")."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return first_line(err)
