"""The two kinds of failure a user can see, each with its exit code."""


class LoraEditError(Exception):
    """A runtime failure (exit code 1): the input was fine, something went wrong while working."""

    exit_code = 1


class InputError(LoraEditError):
    """Bad usage or input (exit code 2): the message names the file or option and says the fix."""

    exit_code = 2
