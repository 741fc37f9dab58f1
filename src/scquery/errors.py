"""The project's error for problems with what the user gave."""


class ScqueryError(Exception):
    """Bad input: one sentence saying what is wrong, in which file, and what to do.

    The command-line interface prints it without a traceback and exits with status 2.
    """
