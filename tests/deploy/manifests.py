"""Loading and checking deploy/kubernetes/ offline: built-in kinds against Kubernetes' own schemas
(kubernetes-validate bundles them), custom resources against the CRD copies in deploy/kubernetes/crds/."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
CRDS = KUBE / "crds"


def load_manifests(folder: Path = KUBE) -> list[tuple[str, dict]]:
    """(file name, object) for every object `kubectl apply -f folder/` would send: the folder's own
    .yaml/.yml/.json files, not its subfolders."""
    out = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def load_crds(folder: Path = CRDS) -> dict[tuple[str, str], dict]:
    """(group, kind) -> CustomResourceDefinition."""
    crds = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] == "CustomResourceDefinition", f"{path.name} holds a {doc['kind']}, not a CRD"
            crds[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return crds


def crd_version_schema(crd: dict, version: str) -> dict:
    """The openAPIV3Schema of one served version of a CRD."""
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            assert v["served"], f"{crd['metadata']['name']} version {version} is not served"
            return v["schema"]["openAPIV3Schema"]
    served = [v["name"] for v in crd["spec"]["versions"] if v["served"]]
    raise AssertionError(f"{crd['metadata']['name']} has no version {version}; served: {served}")


def strict(schema: dict) -> dict:
    """The schema as the API server applies it under kubectl's strict field validation: an object
    with declared properties takes no others (an unknown field is an error, not silently pruned),
    unless it says x-kubernetes-preserve-unknown-fields."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def cel_rules(schema: dict, instance: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, rule, value) for every x-kubernetes-validations rule on a node the instance has.
    jsonschema does not evaluate CEL: the caller checks each rule it meets."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule["rule"], instance
    if isinstance(instance, dict):
        for key, value in instance.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                yield from cel_rules(sub, value, f"{path}.{key}")
    elif isinstance(instance, list) and "items" in schema:
        for i, value in enumerate(instance):
            yield from cel_rules(schema["items"], value, f"{path}[{i}]")


def with_defaults(schema: dict, instance: Any) -> Any:
    """The instance with the schema's defaults filled in, as the API server stores it (CEL rules
    see the defaulted object: an omitted endpointPickerRef.kind is "Service")."""
    if isinstance(instance, dict):
        out = dict(instance)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = with_defaults(sub, out[key])
        return out
    if isinstance(instance, list) and "items" in schema:
        return [with_defaults(schema["items"], v) for v in instance]
    return instance


def _cel_value(value: Any) -> Any:
    # Kubernetes exposes a property named like a CEL reserved word as __word__ (p.__namespace__).
    if isinstance(value, dict):
        return {(f"__{k}__" if k in _CEL_RESERVED else k): _cel_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cel_value(v) for v in value]
    return value


_CEL_RESERVED = {"namespace", "as", "break", "const", "continue", "else", "for", "function", "if", "import",
                 "let", "loop", "package", "return", "var", "void", "while", "in", "true", "false", "null"}


def cel_holds(rule: str, value: Any) -> bool:
    """Evaluate one x-kubernetes-validations rule with `self` bound to value (cel-python)."""
    import celpy  # a CEL implementation of the spec: macros, strings, regexes, durations

    env = celpy.Environment()
    result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(_cel_value(value))})
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def validate_custom_resource(obj: dict, crds: dict) -> None:
    """obj against its CRD's schema under strict field validation, then, on the defaulted object,
    every CEL rule (x-kubernetes-validations) on a node it has, as the API server would."""
    group, version = obj["apiVersion"].split("/")
    crd = crds.get((group, obj["kind"]))
    assert crd is not None, f"no CRD for {obj['kind']} ({group}) in {CRDS}"
    schema = crd_version_schema(crd, version)
    jsonschema.validate(obj, strict(schema), cls=jsonschema.Draft7Validator)
    stored = with_defaults(schema, obj)
    for path, rule, value in cel_rules(schema, stored):
        assert cel_holds(rule, value), f"{obj['kind']}/{obj['metadata']['name']} {path} breaks the CRD's rule: {rule}"


def settings_vars() -> set[str]:
    """The environment variables the server's Settings read."""
    from app import config

    return {config._ENV_NAMES.get(f.name, f.name.upper()) for f in dataclasses.fields(config.Settings)}


def pod_template_matches(selector: dict, labels: dict) -> bool:
    """A matchLabels selector selects these labels."""
    return all(labels.get(k) == v for k, v in selector.items())
