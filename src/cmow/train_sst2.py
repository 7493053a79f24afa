"""Placeholder, replaced in the next commit."""


def add_parser(commands) -> None:
    pass
