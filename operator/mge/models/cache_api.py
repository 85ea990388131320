"""Request and response bodies of the cache admin endpoint (POST /admin/cache/invalidate)."""

import uuid

from pydantic import BaseModel, Field, model_validator


class CacheInvalidateRequest(BaseModel):
    masterplan_id: str | None = Field(
        None, description="Remove the entries this Masterplan wrote (its id, status.masterplanId)."
    )
    model: str | None = Field(
        None, min_length=1, description="Remove every prompt-cache entry of this model."
    )
    all: bool = Field(False, description="Remove every MGE cache entry, prompt and RAG.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "CacheInvalidateRequest":
        given = [
            name for name, value in (("masterplan_id", self.masterplan_id), ("model", self.model)) if value
        ]
        if self.all:
            given.append("all")
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of masterplan_id, model or all=true (got {', '.join(given) or 'none'})"
            )
        if self.masterplan_id is not None:
            try:
                uuid.UUID(self.masterplan_id)
            except ValueError:
                raise ValueError(
                    f"masterplan_id must be a UUID (status.masterplanId), got {self.masterplan_id!r}"
                ) from None
        return self


class CacheInvalidateResponse(BaseModel):
    scope: str = Field(description="masterplan <id>, model <name>, or all.")
    removed_llm_entries: int
    removed_rag_entries: int
    requested_by: str
