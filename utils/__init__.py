"""Plumbing shared by the course's notebooks: paths, the smoke switch, environment, downloads.

Teaching code lives in the notebooks; what is here is what several notebooks need and what is not the lesson.
"""
