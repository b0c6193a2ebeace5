#!/usr/bin/env python3
"""Checks CompressionJob YAML files against the CRD's openAPIV3Schema, offline.

Usage: python3 examples/cluster/validate.py [FILE...]   (default: examples/cluster/*.yaml)

Checks what a structural schema checks: unknown fields (the API server prunes or, with
kubectl's field validation, rejects them), required fields, types, enums, minimum, maxLength.
CEL rules (x-kubernetes-validations) are not evaluated here; for those apply with
`kubectl apply --dry-run=server -f FILE` against a cluster that has the CRD.
Documents of other kinds (e.g. the Secret template) are only parsed.
"""
import glob
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD = os.path.join(ROOT, "crds", "compressionjob.yaml")


def load_schema():
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v.get("served")}
    return group, kind, versions


TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
}


def check(value, schema, path, errors):
    if value is None:
        if not schema.get("nullable"):
            errors.append(f"{path}: null is not allowed")
        return
    t = schema.get("type")
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            errors.append(f"{path}: expected integer, got {type(value).__name__} {value!r}")
            return
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            errors.append(f"{path}: expected number, got {type(value).__name__} {value!r}")
            return
    elif t in TYPES and not isinstance(value, TYPES[t]):
        errors.append(f"{path}: expected {t}, got {type(value).__name__} {value!r}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {[e for e in schema['enum'] if e is not None]}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        errors.append(f"{path}: {value} < minimum {schema['minimum']}")
    if "maxLength" in schema and isinstance(value, str) and len(value) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']}")
    if t == "object":
        props = schema.get("properties")
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{path}: missing required field {req!r}")
        for k, v in value.items():
            if props is not None and k in props:
                check(v, props[k], f"{path}.{k}", errors)
            elif isinstance(schema.get("additionalProperties"), dict):
                check(v, schema["additionalProperties"], f"{path}.{k}", errors)
            elif props is not None or schema.get("additionalProperties") is False:
                known = ", ".join(sorted(props or {}))
                errors.append(f"{path}: unknown field {k!r} (known: {known})")
    elif t == "array":
        for i, item in enumerate(value):
            check(item, schema.get("items", {}), f"{path}[{i}]", errors)


def main(argv):
    group, kind, versions = load_schema()
    here = os.path.dirname(os.path.abspath(__file__))
    files = argv or sorted(glob.glob(os.path.join(here, "*.yaml")))
    failed = False
    for fn in files:
        with open(fn) as f:
            try:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                print(f"FAIL  {fn}: not valid YAML: {e}")
                failed = True
                continue
        for i, doc in enumerate(docs):
            where = f"{os.path.relpath(fn)}#{i}"
            api = doc.get("apiVersion", "")
            if doc.get("kind") != kind or not api.startswith(group + "/"):
                print(f"ok    {where}: {doc.get('kind')} parses (not a {kind}, schema not checked)")
                continue
            version = api.split("/", 1)[1]
            if version not in versions:
                print(f"FAIL  {where}: {api} is not a served version ({', '.join(versions)})")
                failed = True
                continue
            errors = []
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            check(body, versions[version], "", errors)
            if not (doc.get("metadata") or {}).get("name"):
                errors.append("metadata.name is missing")
            if errors:
                failed = True
                for e in errors:
                    print(f"FAIL  {where}: {e.lstrip('.')}")
            else:
                print(f"ok    {where}: {kind} {doc['metadata']['name']} matches the CRD schema")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
