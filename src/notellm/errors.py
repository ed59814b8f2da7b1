"""Errors that tell the user exactly which file, row and field is wrong."""

from __future__ import annotations


class NotellmError(Exception):
    """Base class for errors notellm reports to users (the CLI prints them without a traceback)."""


class DataError(NotellmError):
    """Bad input data. Names the file, the row (1-based, as a person counts) and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.file, self.row, self.field = file, row, field
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file is not None else "",
                f"row {row}" if row is not None else "",
                f"field '{field}'" if field is not None else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(NotellmError):
    """A configuration key or value that does not fit the config dataclass."""
