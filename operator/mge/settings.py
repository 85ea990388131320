"""Operator settings: one typed object read from MGE_* environment variables, validated at start-up."""

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MGE_", extra="ignore")

    watch_namespaces: str = Field(
        "", description="Comma-separated namespaces to reconcile; empty = the operator's own namespace."
    )
    operator_namespace: str = Field("", description="The operator pod's namespace (downward API).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    health_port: int = Field(8080, ge=1, le=65535)
    metrics_port: int = Field(9100, ge=1, le=65535)
    kube_host: str | None = Field(
        None, description="API server URL; unset = in-cluster config or kubeconfig."
    )
    prices_file: Path | None = Field(
        None, description="YAML price table (model -> input/cachedInput/output)."
    )

    def namespaces(self) -> list[str]:
        explicit = [ns.strip() for ns in self.watch_namespaces.split(",") if ns.strip()]
        if explicit:
            return explicit
        if self.operator_namespace:
            return [self.operator_namespace]
        raise ValueError("set MGE_WATCH_NAMESPACES (comma-separated) or MGE_OPERATOR_NAMESPACE")
