"""Errors for bad user input: each names the problem, where it is (a file or an argument) and the fix."""


class InputError(ValueError):
    """Bad input found before any work starts. ``str(e)`` is the message a command prints."""

    def __init__(self, problem: str, where: str, fix: str):
        self.problem, self.where, self.fix = problem, where, fix
        super().__init__(f"{problem}\n  where: {where}\n  fix: {fix}")

    def __reduce__(self):  # raised in worker processes: pickled with its three parts, not the joined message
        return type(self), (self.problem, self.where, self.fix)
