"""The exception types the course raises for problems a learner can fix."""


class CourseError(RuntimeError):
    """A problem with input, cache or environment, with a message that says what to do."""


class CourseArgumentError(CourseError, ValueError):
    """A bad argument to a course function (a rank of 0, a NaN alpha): a CourseError, and a ValueError as Python's own
    functions raise for bad values."""
