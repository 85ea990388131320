"""Builds the chat messages for one atom: its task, its file, the code of the atoms it depends on, and the
reference material retrieved for it."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Bumped whenever the wording changes: part of every prompt-cache key.
PROMPT_VERSION: Final = "atom-v1"

SYSTEM_PROMPT: Final = (
    "You write one source file of a larger project. Answer with the complete file in a single fenced code "
    "block tagged with its language, and nothing else of substance. Import only from the standard library "
    "and from the project files you are shown. Keep the public names exactly as the task states."
)


@dataclass(frozen=True, slots=True)
class DependencyCode:
    file: str
    code: str


@dataclass(frozen=True, slots=True)
class AtomTask:
    atom_id: str
    file: str
    language: str
    description: str


def atom_messages(
    task: AtomTask,
    dependencies: Sequence[DependencyCode],
    previous_error: str | None = None,
    context: str = "",
) -> list[dict[str, str]]:
    """System + user messages; a failed attempt's validation error is fed back so the model can repair it.
    `context`: retrieved reference material, labelled by origin (none: the prompt is as without retrieval)."""
    parts = [f"Write `{task.file}` ({task.language}).", f"Task: {task.description}"]
    if context:
        parts.append(
            "Reference material from this project (conventions, specifications, existing code); follow it "
            "where it applies:\n" + context
        )
    if dependencies:
        parts.append("Project files it may use (already written):")
        parts.extend(f"--- {dep.file}\n```{_fence(dep.file)}\n{dep.code}\n```" for dep in dependencies)
    if previous_error:
        parts.append(
            f"Your previous answer for this file was rejected:\n{previous_error}\nReturn the corrected complete file."
        )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n\n".join(parts)}]


def _fence(file: str) -> str:
    suffix = file.rsplit(".", 1)[-1]
    return {"py": "python", "ts": "typescript", "tsx": "tsx", "js": "javascript", "mjs": "javascript"}.get(
        suffix, ""
    )
