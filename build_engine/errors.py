"""The one error type the build steps raise: its message names the culprit."""


class BuildError(Exception):
    """A build step failed for a reason the user can fix; main() prints it and exits 1."""
