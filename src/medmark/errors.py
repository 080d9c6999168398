"""Error types that name the offending file, row and field."""

from __future__ import annotations


class DataFormatError(ValueError):
    """Bad input data: the message names the file, the 1-based CSV line (header = 1) and field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"line {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.file, self.row, self.field = file, row, field
