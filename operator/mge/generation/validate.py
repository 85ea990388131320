"""Syntax validation of generated Python in-process (no I/O); TypeScript goes through adapters/typescript."""

import ast


class InvalidCode(ValueError):
    """Validation failure; the message is fed back to the model, so it names the line and the problem."""


def validate_python(code: str, file: str) -> None:
    try:
        tree = ast.parse(code, filename=file)
        compile(tree, file, "exec", dont_inherit=True)
    except SyntaxError as error:
        line = (error.text or "").rstrip()
        raise InvalidCode(
            f"{file}:{error.lineno}:{error.offset}: SyntaxError: {error.msg}\n    {line}"
        ) from None
