"""MGE operator: executes Masterplans (AI code-generation plans) on Kubernetes or locally."""

from typing import Final

__version__: Final = "0.1.0"
