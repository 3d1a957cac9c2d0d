"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""


class SimflError(Exception):
    """A mistake in the user's input or environment, with a message meant for people."""
