"""The one exception type for user mistakes."""


class UsageError(ValueError):
    """A mistake in what the user asked for (a length, a name, a file).

    The library raises it with a message that says what is wrong and what would be right;
    the command line prints that message as one line and exits with code 2.
    """
