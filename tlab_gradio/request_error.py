"""The one error a request can end in: every problem found, each naming the bad value."""


class RequestError(ValueError):
    """A job request that cannot be launched; `problems` lists each reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))
