"""Plumbing shared by the course's notebooks: paths, the smoke switch, environment, downloads.

Teaching code lives in the notebooks; what is here is what several notebooks need and what is not the lesson.
"""


def key_figure(name: str, value: object) -> None:
    """Print the figure a notebook reports, in the form `make run`'s summary collects (`Key figure: name = value`)."""
    print(f"Key figure: {name} = {value}")
