"""Validates generated code by language: Python in-process, TypeScript/JavaScript with the TypeScript compiler."""

from mge.adapters.typescript import TypeScriptChecker
from mge.generation.validate import InvalidCode, validate_python


class CodeValidator:
    def __init__(self, typescript: TypeScriptChecker | None = None) -> None:
        self._typescript = typescript or TypeScriptChecker()

    async def validate(self, language: str, file: str, code: str) -> None:
        """Raises InvalidCode with messages naming line and problem (fed back to the model for a repair)."""
        if language == "python":
            validate_python(code, file)
            return
        errors = await self._typescript.check(file, code)
        if errors:
            raise InvalidCode("\n".join(errors[:20]))

    async def close(self) -> None:
        await self._typescript.close()
