"""The base of every error perfkit raises for a user to act on (a bad param, a missing model, a failed stage).

The CLI prints such an error's message and exits 2, without a traceback. It lives in its own
dependency-free module so that the CLI can catch it without importing torch.
"""


class PerfkitError(Exception):
    """An error whose message tells the user what to change."""
