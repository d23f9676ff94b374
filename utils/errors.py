"""The one exception type the course raises for problems a learner can fix."""


class CourseError(RuntimeError):
    """A problem with input, cache or environment, with a message that says what to do."""
