"""Which executors a scale-down may remove: only idle ones, ranked for the ReplicaSet by pod-deletion-cost.

Pure. `load` maps an executor id (its pod name) to the atoms it reported holding; an executor with no
fresh report (starting, or gone) holds none as far as the scaler knows.
"""

from collections.abc import Iterable, Mapping
from typing import Final

# The ReplicaSet controller deletes the pods with the lowest cost first (Kubernetes >= 1.22).
DELETION_COST_ANNOTATION: Final = "controller.kubernetes.io/pod-deletion-cost"
_MAX_COST: Final = 2**31 - 1  # the annotation is an int32


def idle_executors(replicas: int, load: Mapping[str, int]) -> int:
    """Executors of the `replicas` holding no atoms: how many a scale-down can remove without interrupting work."""
    busy = sum(1 for held in load.values() if held > 0)
    return max(0, replicas - busy)


def deletion_costs(pods: Iterable[str], load: Mapping[str, int]) -> dict[str, int]:
    """Pod name -> deletion cost: 0 for idle executors, the number of atoms held for busy ones."""
    return {pod: min(max(load.get(pod, 0), 0), _MAX_COST) for pod in pods}


def cost_patches(current: Mapping[str, str | None], costs: Mapping[str, int]) -> dict[str, str]:
    """Only the pods whose annotation differs from its cost: no write for a pod already ranked right."""
    return {pod: str(cost) for pod, cost in costs.items() if current.get(pod) != str(cost)}
