"""What the API server does with a CRD's structural schema: defaulting, validation and CEL rules, offline."""

import copy
import re
from collections.abc import Iterator
from typing import Any

import celpy

Schema = dict[str, Any]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}
_SELF_FIELD = re.compile(r"\bself\.([A-Za-z_][A-Za-z0-9_]*)")


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node with its path: `.spec.budget`, `.spec.atoms[]`."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")


def apply_defaults(schema: Schema, value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in, as the API server does on create and update."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], item) for item in value]
    return value


def structural_errors(schema: Schema, value: Any, path: str = "") -> list[str]:
    """OpenAPI v3 checks of a structural schema: type, enum, bounds, lengths, pattern, required, unknown fields."""
    where = path or "<root>"
    type_ = schema.get("type")
    if type_ is not None:
        wrong_bool = isinstance(value, bool) and type_ not in ("boolean",)
        if wrong_bool or not isinstance(value, _TYPES[type_]):
            return [f"{where}: {value!r} is not of type {type_}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                errors.append(
                    f"{where}: {value} is below the minimum {low} (exclusive: {schema.get('exclusiveMinimum', False)})"
                )
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") and value == high):
                errors.append(
                    f"{where}: {value} is above the maximum {high} (exclusive: {schema.get('exclusiveMaximum', False)})"
                )
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        keys = schema.get("x-kubernetes-list-map-keys")
        if keys:
            seen = [tuple(item.get(k) for k in keys) for item in value if isinstance(item, dict)]
            duplicates = {k for k in seen if seen.count(k) > 1}
            if duplicates:
                errors.append(f"{where}: duplicate entries for keys {keys}: {sorted(duplicates)}")
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += structural_errors(schema["items"], item, f"{path}[{index}]")
    if isinstance(value, dict) and type_ == "object":
        properties = schema.get("properties", {})
        errors += [
            f"{where}: missing required field {name!r}"
            for name in schema.get("required", [])
            if name not in value
        ]
        if properties and not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors += [f"{where}: unknown field {name!r}" for name in value if name not in properties]
        for name, child in properties.items():
            if name in value:
                errors += structural_errors(child, value[name], f"{path}.{name}")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(f"{where}: more than {schema['maxProperties']} properties")
        if isinstance(schema.get("additionalProperties"), dict):  # a map: every value against one schema
            for name, item in value.items():
                errors += structural_errors(schema["additionalProperties"], item, f"{path}.{name}")
    return errors


def _cel_value(schema: Schema, value: Any) -> Any:
    """JSON as the API server hands it to CEL: a `number` field is a double even when written as 60."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {k: _cel_value(properties.get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [_cel_value(items, v) for v in value]
    return value


def evaluate_rule(rule: str, schema: Schema, value: Any) -> str | None:
    """None when the rule admits `value`; else why not (a false result or an evaluation error)."""
    env = celpy.Environment()
    try:
        result = env.program(env.compile(rule)).evaluate(
            {"self": celpy.json_to_cel(_cel_value(schema, value))}
        )
    except celpy.CELEvalError as error:
        return f"error: {error.args[0] if error.args else error}"
    if isinstance(result, celpy.CELEvalError):
        return f"error: {result.args[0] if result.args else result}"
    return None if bool(result) else "false"


def cel_errors(schema: Schema, value: Any, path: str = "") -> list[str]:
    """Every `x-kubernetes-validations` rule of this node and of the nodes `value` reaches, evaluated on it."""
    errors = [
        f"{path or '<root>'}: rule {rule['rule']!r} on {value!r}: {why}"
        for rule in schema.get("x-kubernetes-validations", [])
        if (why := evaluate_rule(rule["rule"], schema, value)) is not None
    ]
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                errors += cel_errors(child, value[name], f"{path}.{name}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(schema["items"], item, f"{path}[{index}]")
    return errors


def admission_errors(schema: Schema, value: Any, path: str = "") -> list[str]:
    """Defaults applied, then the structural checks, then the CEL rules: why the API server would refuse it."""
    defaulted = apply_defaults(schema, value)
    return structural_errors(schema, defaulted, path) or cel_errors(schema, defaulted, path)


def default_errors(schema: Schema) -> list[str]:
    """The CRD-creation check: each default, as written, valid against its node's schema and rules; and the
    value a CR ends up with (nested defaults applied) valid too."""
    errors: list[str] = []
    for path, node in walk(schema):
        if "default" in node:
            default = node["default"]
            errors += structural_errors(node, default, f"{path}.default")
            errors += cel_errors(node, default, f"{path}.default")
            errors += admission_errors(node, default, f"{path}.default(defaulted)")
    return errors


def unguarded_optional_fields(schema: Schema) -> list[str]:
    """Rules that read a field which may be absent (not required, no default) without `has(self.field)`."""
    problems: list[str] = []
    for path, node in walk(schema):
        properties, required = node.get("properties", {}), set(node.get("required", []))
        for rule in node.get("x-kubernetes-validations", []):
            text = rule["rule"]
            for name in sorted(set(_SELF_FIELD.findall(text))):
                optional = name in properties and name not in required and "default" not in properties[name]
                if optional and f"has(self.{name})" not in text:
                    problems.append(f"{path or '<root>'}: rule {text!r} reads optional {name} without has()")
    return problems
