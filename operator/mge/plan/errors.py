"""Plan errors: each names the offending atoms and maps to one condition reason."""

from collections.abc import Sequence

from mge.models.conditions import Reason

_SHOWN = 10


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_SHOWN])
    return shown + (f" (and {len(ids) - _SHOWN} more)" if len(ids) > _SHOWN else "")


class PlanError(ValueError):
    """A plan that cannot run as written; `reason` is the condition reason, str(self) the actionable message."""

    reason: Reason = Reason.PLAN_INVALID


class EmptyPlan(PlanError):
    reason = Reason.EMPTY_PLAN

    def __init__(self) -> None:
        super().__init__(
            "the plan has no atoms: add at least one atom to spec.atoms (or the atomsFrom ConfigMap)"
        )


class DuplicateAtomIds(PlanError):
    reason = Reason.DUPLICATE_ATOM_ID

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        super().__init__(f"atom ids must be unique; duplicated: {_ids(self.ids)}")


class SelfDependencies(PlanError):
    reason = Reason.SELF_DEPENDENCY

    def __init__(self, ids: Sequence[str]) -> None:
        self.ids = list(ids)
        super().__init__(
            f"atoms that depend on themselves: {_ids(self.ids)}; remove their own id from dependsOn"
        )


class UnknownDependencies(PlanError):
    reason = Reason.UNKNOWN_DEPENDENCY

    def __init__(self, missing: Sequence[tuple[str, str]]) -> None:
        self.missing = list(missing)
        pairs = [f"{atom} -> {dep}" for atom, dep in self.missing]
        super().__init__(
            f"dependsOn names atoms that do not exist: {_ids(pairs)}; fix the id or add the atom"
        )


class DependencyCycle(PlanError):
    reason = Reason.DEPENDENCY_CYCLE

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = list(cycle)
        path = " -> ".join([*self.cycle, self.cycle[0]])
        super().__init__(
            f"dependency cycle: {path} (each atom depends on the next); remove one of these dependsOn edges"
        )


class InvalidSpec(PlanError):
    """The spec or the atom list fails validation (normally caught earlier by the CRD schema)."""

    reason = Reason.INVALID_SPEC

    def __init__(self, details: str) -> None:
        super().__init__(f"invalid spec: {details}")


class AtomsSourceNotFound(PlanError):
    reason = Reason.ATOMS_SOURCE_NOT_FOUND

    def __init__(self, config_map: str, key: str) -> None:
        super().__init__(
            f"spec.atomsFrom.configMapKeyRef points at ConfigMap {config_map!r} key {key!r}, which does not exist; "
            "create it (kubectl create configmap ... --from-file=<key>=atoms.yaml), retrying every 30 s"
        )


class ContextSourceNotFound(PlanError):
    reason = Reason.CONTEXT_SOURCE_NOT_FOUND

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; retrying every 30 s")


class FileConflicts(PlanError):
    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"atom files clash: {_ids(self.problems)}; give each atom its own file")
