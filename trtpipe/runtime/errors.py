"""The one error type users see: the CLI prints it as one red line and exits 2."""


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


class CheckFailed(Exception):
    """A parity check or an accuracy gate failed (the CLI exits 1)."""
