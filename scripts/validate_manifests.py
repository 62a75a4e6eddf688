"""Validates Nod's Kubernetes manifests offline: no cluster, no network.

Run it through scripts/validate-manifests, which picks the Python of the venv
that scripts/setup makes. Subcommands:

  k8s FILE...              every YAML document against the Kubernetes schemas
                           (kubernetes-validate, strict: unknown fields fail);
                           CustomResourceDefinitions also against the
                           apiserver's structural-schema rules. Kinds with no
                           bundled schema are skipped, except custom resources
                           of a CRD given with --crd.
  cr --crd CRD FILE...     custom resources against their CRD's
                           openAPIV3Schema (jsonschema; unknown fields fail,
                           as the apiserver would prune them).
  chart CHARTDIR           helm lint, render with default and non-default
                           values (Helm v4's library, helm-python-sdk), check
                           values.schema.json rejects bad values, validate every
                           rendered document as `k8s` does, check objects that
                           refer to each other, the alert rules' and the
                           dashboard's PromQL, and that the chart's crds/ is the
                           repository's crds/ byte for byte.

A FILE of - is standard input (e.g. `nod-operator render -f X | ... k8s -`).
Each failure names the file or template, the document and the error; the exit
status is 1 when anything failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from jsonschema.protocols import Validator
from kubernetes_validate import utils as kv_utils

REPO = Path(__file__).resolve().parent.parent
DEFAULT_K8S_VERSIONS = "1.30"

# ---------------------------------------------------------------- reporting


@dataclass
class Report:
    """Collects one line per document checked and every failure."""

    passed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def ok(self, what: str, detail: str = "") -> None:
        self.passed += 1
        print(f"ok    {what}{'  ' + detail if detail else ''}")

    def skip(self, what: str, why: str) -> None:
        self.skipped += 1
        print(f"skip  {what}  ({why})")

    def fail(self, what: str, errors: Iterable[str]) -> None:
        errors = list(errors)
        self.failures.append(what)
        print(f"FAIL  {what}")
        for error in errors:
            for n, line in enumerate(str(error).rstrip().splitlines()):
                print(f"        {'- ' if n == 0 else '  '}{line}")

    def note(self, text: str) -> None:
        print(f"note  {text}")

    def check(self, what: str, errors: list[str], detail: str = "") -> None:
        if errors:
            self.fail(what, errors)
        else:
            self.ok(what, detail)

    def finish(self) -> int:
        if self.failures:
            print(f"validate-manifests: FAILED ({len(self.failures)} failed; "
                  f"{self.passed} ok, {self.skipped} skipped)")
            return 1
        print(f"validate-manifests: ok ({self.passed} ok, {self.skipped} skipped)")
        return 0


# ---------------------------------------------------------------- YAML input


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys (PyYAML keeps the last one
    silently; the apiserver's strict decoding rejects them)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    mapping = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class Document:
    source: str  # file or template path
    index: int  # position among the source's non-empty documents, from 1
    body: Any

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "")) if isinstance(self.body, dict) else ""

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", "")) if isinstance(self.body, dict) else ""

    @property
    def name(self) -> str:
        meta = self.body.get("metadata") if isinstance(self.body, dict) else None
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str:
        meta = self.body.get("metadata") if isinstance(self.body, dict) else None
        return str(meta.get("namespace", "")) if isinstance(meta, dict) else ""

    def label(self) -> str:
        what = f"{self.kind or '?'}/{self.name or '?'}"
        return f"{self.source} #{self.index} {what}"


def parse_documents(text: str, source: str) -> list[Document]:
    """Every non-empty YAML document of text. Raises ValueError naming the
    source when the YAML does not parse."""
    try:
        bodies = list(yaml.load_all(text, Loader=StrictLoader))
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {error}") from None
    return [Document(source, n, body) for n, body in enumerate((b for b in bodies if b is not None), 1)]


def load_files(paths: list[str], report: Report) -> list[Document]:
    documents = []
    for path in paths:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text()
        except OSError as error:
            report.fail(path, [f"cannot read: {error}"])
            continue
        try:
            found = parse_documents(text, path)
        except ValueError as error:
            report.fail(path, [str(error)])
            continue
        if not found:
            report.fail(path, ["no YAML documents"])
        documents.extend(found)
    return documents


# ---------------------------------------------------------------- metadata

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Names that are path segments only (the apiserver's rule for these kinds).
PATH_SEGMENT_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}
DNS1035_KINDS = {"Service"}
DNS1123_LABEL_KINDS = {"Namespace"}


def check_name(kind: str, name: str) -> list[str]:
    if not name:
        return ["metadata.name is missing"]
    if kind in PATH_SEGMENT_KINDS:
        if name in (".", "..") or "/" in name or "%" in name:
            return [f"metadata.name {name!r} is not a valid path segment"]
        return []
    if kind in DNS1035_KINDS:
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            return [f"metadata.name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starts with a letter, "
                    f"at most 63 characters; it has {len(name)})"]
        return []
    if kind in DNS1123_LABEL_KINDS:
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            return [f"metadata.name {name!r} is not a DNS-1123 label"]
        return []
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return [f"metadata.name {name!r} is not a DNS-1123 subdomain"]
    return []


def check_label_map(where: str, labels: Any, values_too: bool) -> list[str]:
    """Label (or annotation, values_too=False) keys, and label values, as the
    apiserver checks them."""
    errors = []
    if not isinstance(labels, dict):
        return [f"{where} is not a map"] if labels is not None else []
    for key, value in labels.items():
        key = str(key)
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
            errors.append(f"{where}: key {key!r}: prefix is not a DNS-1123 subdomain")
        if len(name) > 63 or not LABEL_NAME.match(name):
            errors.append(f"{where}: key {key!r} is not a valid qualified name")
        if not isinstance(value, str):
            errors.append(f"{where}: value of {key!r} is {type(value).__name__}, not a string")
        elif values_too and (len(value) > 63 or not LABEL_VALUE.match(value)):
            errors.append(f"{where}: value {value!r} of {key!r} is not a valid label value")
    return errors


def check_metadata(document: Document) -> list[str]:
    body = document.body
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata is missing"]
    errors = check_name(document.kind, document.name)
    if document.namespace and not DNS1123_LABEL.match(document.namespace):
        errors.append(f"metadata.namespace {document.namespace!r} is not a DNS-1123 label")
    errors += check_label_map("metadata.labels", meta.get("labels"), values_too=True)
    errors += check_label_map("metadata.annotations", meta.get("annotations"), values_too=False)
    # Pod templates carry labels too, and a selector must select its own pods.
    spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
    template = spec.get("template") if isinstance(spec.get("template"), dict) else None
    if template is not None and isinstance(template.get("metadata"), dict):
        template_labels = template["metadata"].get("labels") or {}
        errors += check_label_map("spec.template.metadata.labels", template_labels, values_too=True)
        selector = spec.get("selector")
        if isinstance(selector, dict) and isinstance(selector.get("matchLabels"), dict):
            for key, value in selector["matchLabels"].items():
                if template_labels.get(key) != value:
                    errors.append(f"spec.selector.matchLabels {key}={value} does not select the pod template "
                                  f"(its labels: {template_labels})")
    return errors


# ---------------------------------------------------------------- Kubernetes schemas


def k8s_versions(spec: str) -> list[str]:
    """'1.25,1.30,latest' -> ['1.25', '1.30', '1.37'], checked against what
    kubernetes-validate bundles."""
    bundled = [kv_utils.major_minor(v) for v in kv_utils.all_versions()]
    versions = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        version = bundled[-1] if item == "latest" else kv_utils.major_minor(item.lstrip("v"))
        if version not in bundled:
            raise SystemExit(f"validate-manifests: kubernetes-validate {kubernetes_validate.__version__} has no "
                             f"schemas for Kubernetes {item} (it has {bundled[0]} to {bundled[-1]})")
        if version not in versions:
            versions.append(version)
    return versions


def is_builtin_group(api_version: str) -> bool:
    """Whether an apiVersion belongs to Kubernetes itself (core, apps,
    *.k8s.io, ...), so that a missing schema means a removed or misspelt
    version rather than a custom resource."""
    group = api_version.rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


_validators: dict[tuple[str, str, str], Validator | None] = {}
_definitions: dict[str, Any] = {}


def k8s_validator(kind: str, api_version: str, version: str) -> Validator | None:
    """The strict validator kubernetes_validate.validate() builds, kept so
    that iter_errors can report every error (validate() raises the first)
    and _definitions.json is read once per version."""
    key = (kind, api_version, version)
    if key not in _validators:
        from referencing import Registry, Resource

        schema_dir = f"kubernetes-json-schema/v{version}.0-local-strict"
        short = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
        try:
            schema = kv_utils.schema_contents(f"{schema_dir}/{kind.lower()}-{short}.json", version)
        except FileNotFoundError:
            _validators[key] = None
            return None
        if version not in _definitions:
            _definitions[version] = Resource.from_contents(
                kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version))
        registry = _definitions[version] @ (Resource.from_contents(schema) @ Registry())
        _validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
    return _validators[key]


def validate_k8s_schema(document: Document, versions: list[str]) -> tuple[str, list[str]]:
    """('ok'|'unknown', errors) against the strict Kubernetes schemas of each
    version. 'unknown': no version has a schema for the kind (a custom
    resource)."""
    found: dict[str, list[str]] = {}  # error -> the versions that report it
    missing = []
    for version in versions:
        validator = k8s_validator(document.kind, document.api_version, version)
        if validator is None:
            missing.append(version)
            continue
        for error in sorted(validator.iter_errors(document.body), key=lambda e: [str(p) for p in e.path]):
            path = ".".join(str(p) for p in error.path) or "(root)"
            found.setdefault(f"{path}: {error.message}", []).append(version)
    if len(missing) == len(versions) and not is_builtin_group(document.api_version):
        return "unknown", []
    errors = [f"Kubernetes {', '.join(v)}: {e}" for e, v in found.items()]
    if missing:
        errors.append(f"Kubernetes {', '.join(missing)} has no {document.api_version} {document.kind} "
                      f"(removed by then, not there yet, or misspelt)")
    return "ok", errors


# ---------------------------------------------------------------- CRDs

# Keywords an apiserver rejects in a v1 CRD schema (apiextensions validation).
FORBIDDEN_KEYWORDS = {"$ref", "$schema", "id", "definitions", "additionalItems", "patternProperties",
                      "dependencies"}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
NOT_IN_JUNCTORS = ("description", "type", "default", "additionalProperties", "nullable")


def is_int_or_string_junctor(node: dict) -> bool:
    """The two shapes an x-kubernetes-int-or-string node may use in anyOf."""
    any_of = node.get("anyOf")
    if not isinstance(any_of, list):
        return False
    types = [n.get("type") for n in any_of if isinstance(n, dict)]
    return sorted(types) == ["integer", "string"]


def check_structural(node: Any, path: str, errors: list[str], in_junctor: bool = False,
                     at_root: bool = False) -> None:
    """The apiserver's rules for a structural schema (Kubernetes docs,
    "Specifying a structural schema"), and the v1 restrictions."""
    if not isinstance(node, dict):
        errors.append(f"{path}: a schema must be an object")
        return
    for keyword in FORBIDDEN_KEYWORDS & node.keys():
        errors.append(f"{path}: {keyword} is not allowed in a CRD schema")
    if node.get("uniqueItems") is True:
        errors.append(f"{path}: uniqueItems: true is not allowed")
    if node.get("additionalProperties") is False:
        errors.append(f"{path}: additionalProperties: false is not allowed (unknown fields are pruned)")
    if "properties" in node and "additionalProperties" in node:
        errors.append(f"{path}: properties and additionalProperties are mutually exclusive")
    if isinstance(node.get("items"), list):
        errors.append(f"{path}: items must be a single schema, not a list")
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if in_junctor:
        for keyword in NOT_IN_JUNCTORS:
            if keyword in node:
                errors.append(f"{path}: {keyword} is not allowed inside allOf/anyOf/oneOf/not")
    elif not node.get("type") and not preserve and not int_or_string:
        errors.append(f"{path}: type is missing (a structural schema names a type at every node)")
    if int_or_string and node.get("type"):
        errors.append(f"{path}: x-kubernetes-int-or-string: true must not also set type")
    if int_or_string and "anyOf" in node and not is_int_or_string_junctor(node):
        errors.append(f"{path}: x-kubernetes-int-or-string with an anyOf other than integer|string")
    if at_root and node.get("type") != "object":
        errors.append(f"{path}: the root must be of type object")
    list_type = node.get("x-kubernetes-list-type")
    map_keys = node.get("x-kubernetes-list-map-keys")
    if map_keys is not None:
        if list_type != "map":
            errors.append(f"{path}: x-kubernetes-list-map-keys needs x-kubernetes-list-type: map")
        items = node.get("items") if isinstance(node.get("items"), dict) else {}
        for key in map_keys:
            props = items.get("properties", {})
            if key not in props:
                errors.append(f"{path}: list map key {key!r} is not a property of the items")
            elif key not in items.get("required", []) and "default" not in props[key]:
                errors.append(f"{path}: list map key {key!r} must be required or have a default")
    if list_type == "map" and map_keys is None:
        errors.append(f"{path}: x-kubernetes-list-type: map needs x-kubernetes-list-map-keys")

    properties = node.get("properties", {})
    if at_root and isinstance(properties.get("metadata"), dict):
        meta = properties["metadata"]
        allowed = {"type", "description"} | ({"properties"} if set(meta.get("properties", {})) <= {
            "name", "generateName"} else set())
        if not set(meta) <= allowed:
            errors.append(f"{path}.properties.metadata: only type and constraints on name and generateName "
                          f"are allowed, found {sorted(set(meta) - allowed)}")
    for name, child in properties.items():
        check_structural(child, f"{path}.properties.{name}", errors, in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        check_structural(node["additionalProperties"], f"{path}.additionalProperties", errors, in_junctor)
    if isinstance(node.get("items"), dict):
        check_structural(node["items"], f"{path}.items", errors, in_junctor)
    for junctor in JUNCTORS:
        value = node.get(junctor)
        for n, child in enumerate(value if isinstance(value, list) else [value] if value else []):
            child_path = f"{path}.{junctor}[{n}]"
            if int_or_string and junctor == "anyOf":
                continue  # the allowed {type: integer} | {type: string} pair
            check_structural(child, child_path, errors, in_junctor=True)
            for name in (child.get("properties", {}) if isinstance(child, dict) else {}):
                if name not in properties:
                    errors.append(f"{child_path}: property {name!r} must also be specified outside {junctor}")
    if "default" in node and not in_junctor:
        default_errors = sorted(strict_validator(node).iter_errors(node["default"]), key=lambda e: list(e.path))
        for error in default_errors:
            errors.append(f"{path}.default: {error.message}")


def schema_at(schema: dict, json_path: str) -> dict | None:
    """The schema node a simple JSON path (.spec.replicas) points to."""
    node = schema
    for part in json_path.strip(".").split("."):
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("x-kubernetes-preserve-unknown-fields"):
            return {}
        else:
            return None
    return node


def check_crd(document: Document) -> list[str]:
    """Rules the apiserver applies to a CustomResourceDefinition beyond its
    OpenAPI schema."""
    errors = []
    spec = document.body.get("spec", {})
    names = spec.get("names", {})
    group = spec.get("group", "")
    expected = f"{names.get('plural')}.{group}"
    if document.name != expected:
        errors.append(f"metadata.name must be <plural>.<group> = {expected!r}")
    versions = spec.get("versions", [])
    storage = [v.get("name") for v in versions if v.get("storage")]
    if len(storage) != 1:
        errors.append(f"exactly one version must be the storage version, found {storage}")
    for version in versions:
        where = f"versions[{version.get('name')}]"
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        if schema is None:
            errors.append(f"{where}: no openAPIV3Schema (v1 requires one)")
            continue
        check_structural(schema, f"{where}.openAPIV3Schema", errors, at_root=True)
        for column in version.get("additionalPrinterColumns", []):
            json_path = column.get("jsonPath", "")
            if json_path.startswith(".metadata."):
                continue
            target = schema_at(schema, json_path)
            if target is None:
                errors.append(f"{where}: printer column {column.get('name')} points to {json_path}, "
                              f"which the schema does not have")
            elif column.get("type") in ("integer", "number", "string", "boolean") and target.get("type") not in (
                    None, column["type"]):
                errors.append(f"{where}: printer column {column.get('name')} is {column['type']} but "
                              f"{json_path} is {target.get('type')}")
        scale = (version.get("subresources") or {}).get("scale")
        if scale:
            for key, want in (("specReplicasPath", "integer"), ("statusReplicasPath", "integer"),
                              ("labelSelectorPath", "string")):
                if key not in scale:
                    if key != "labelSelectorPath":
                        errors.append(f"{where}: scale subresource needs {key}")
                    continue
                target = schema_at(schema, scale[key])
                if target is None:
                    errors.append(f"{where}: scale {key} {scale[key]} is not in the schema")
                elif target.get("type") != want:
                    errors.append(f"{where}: scale {key} {scale[key]} must be {want}, is {target.get('type')}")
    return errors


# ---------------------------------------------------------------- custom resources


def to_strict_jsonschema(node: Any) -> Any:
    """A CRD's structural schema as a JSON Schema that fails where the
    apiserver would prune: objects that list properties (and do not preserve
    unknown fields) get additionalProperties: false. nullable becomes a null
    type."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties",):
            out[key] = {name: to_strict_jsonschema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_strict_jsonschema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_strict_jsonschema(child) for child in value]
        else:
            out[key] = value
    if "properties" in out and "additionalProperties" not in out and not node.get(
            "x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def strict_validator(schema: dict) -> Validator:
    # OpenAPI v3.0 schemas are a draft-4 dialect (boolean exclusiveMinimum).
    return jsonschema.Draft4Validator(to_strict_jsonschema(schema))


@dataclass
class CustomResourceSchema:
    crd_source: str
    group: str
    version: str
    kind: str
    schema: dict
    has_cel: bool


def load_crds(paths: list[str], report: Report) -> dict[tuple[str, str], CustomResourceSchema]:
    """(apiVersion, kind) -> schema, for every served version of every CRD in
    the files."""
    schemas = {}
    for document in load_files(paths, report):
        if document.kind != "CustomResourceDefinition":
            report.fail(document.label(), ["--crd file holds something other than a CustomResourceDefinition"])
            continue
        spec = document.body.get("spec", {})
        for version in spec.get("versions", []):
            if not version.get("served"):
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
            key = (f"{spec.get('group')}/{version.get('name')}", spec.get("names", {}).get("kind"))
            schemas[key] = CustomResourceSchema(
                document.source, spec.get("group"), version.get("name"), key[1], schema,
                "x-kubernetes-validations" in json.dumps(schema))
    return schemas


def validate_custom_resource(document: Document, crd: CustomResourceSchema) -> list[str]:
    errors = check_metadata(document)
    body = copy.deepcopy(document.body)
    # metadata is checked above as ObjectMeta; the CRD schema may only
    # constrain name and generateName.
    schema = copy.deepcopy(crd.schema)
    schema.get("properties", {}).pop("metadata", None)
    body.pop("metadata", None)
    # The apiserver always accepts apiVersion and kind at the root, whether
    # or not the CRD's schema lists them (kube-derive's does not).
    if "properties" in schema:
        for implicit in ("apiVersion", "kind"):
            schema["properties"].setdefault(implicit, {"type": "string"})
    validator = strict_validator(schema)
    for error in sorted(validator.iter_errors(body), key=lambda e: [str(p) for p in e.path]):
        path = ".".join(str(p) for p in error.path) or "(root)"
        errors.append(f"{path}: {error.message}")
    return errors


# ---------------------------------------------------------------- one document


def validate_document(document: Document, versions: list[str],
                      crds: dict[tuple[str, str], CustomResourceSchema], report: Report) -> None:
    label = document.label()
    if not isinstance(document.body, dict):
        report.fail(label, ["a document must be a mapping"])
        return
    if not document.kind or not document.api_version:
        report.fail(label, ["apiVersion and kind are required"])
        return
    crd = crds.get((document.api_version, document.kind))
    if crd is not None:
        errors = validate_custom_resource(document, crd)
        detail = f"against {crd.crd_source} ({crd.group}/{crd.version})"
        if crd.has_cel and not errors:
            detail += "; x-kubernetes-validations (CEL) not evaluated"
        report.check(label, errors, detail)
        return
    status, errors = validate_k8s_schema(document, versions)
    if status == "unknown":
        report.skip(label, f"no Kubernetes schema for {document.api_version} {document.kind}"
                    + ("" if crds else "; pass --crd to check custom resources"))
        return
    errors += check_metadata(document)
    if document.kind == "CustomResourceDefinition":
        errors += check_crd(document)
    report.check(label, errors, f"Kubernetes {', '.join(versions)}")


# ---------------------------------------------------------------- chart

# The non-default values the chart must render and validate with.
CUSTOM_VALUES = {
    "replicaCount": 2,
    "watchNamespaces": ["a", "b"],
    "image": {"repository": "registry.example.com/nod/nod-operator", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-credentials"}],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": 1, "memory": "512Mi"}},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
    "nodeSelector": {"kubernetes.io/os": "linux", "node-role.example.com/infra": ""},
    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
            "matchLabels": {"app.kubernetes.io/name": "nod-operator"}}}}]}},
    "podAnnotations": {"example.com/team": "storage"},
    "podLabels": {"team": "storage"},
    "priorityClassName": "system-cluster-critical",
    "logLevel": "debug,kube=info",
    "logFormat": "text",
    "serviceAccount": {"create": True, "name": "nod-operator-sa", "annotations": {"example.com/role": "nod"}},
    "metrics": {"port": 9090},
    "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "grafanaDashboard": {"enabled": True},
}

# Values values.schema.json must reject, and why.
BAD_VALUES = [
    ({"replicaCount": "x"}, "replicaCount is a string"),
    ({"replicaCuont": 2}, "an unknown top-level key"),
    ({"image": {"repository": "x", "pullPolicy": "IfNotPresent", "tagg": "1"}}, "an unknown nested key"),
    ({"logFormat": "xml"}, "logFormat outside json|text"),
    ({"metrics": {"port": 70000}}, "a port above 65535"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "a namespace that is not a DNS label"),
    ({"serviceMonitor": {"enabled": "yes"}}, "a boolean given as a string"),
]

RELEASE = "nod-operator"
NAMESPACE = "nod-system"


def lint_chart(helm: Any, chart_dir: Path, values: dict | None, versions: list[str], what: str,
               report: Report) -> None:
    errors, notes = [], []
    for version in versions:
        result = helm.lint(str(chart_dir), values, strict=True, namespace=NAMESPACE,
                           kube_version=f"v{version}.0")
        for message in result.get("messages", []):
            line = f"{message.get('path')}: {str(message.get('error')).strip()}"
            if message.get("severity", 0) >= 2:
                errors.append(f"Kubernetes {version}: {line}")
            elif line not in notes:
                notes.append(line)
        errors += [f"Kubernetes {version}: {e.strip()}" for e in result.get("errors", [])
                   if not any(e.strip() in x for x in errors)]
    for line in notes:
        report.note(f"helm lint ({what}): {line}")
    report.check(f"helm lint {chart_dir} ({what})", errors, f"Kubernetes {', '.join(versions)}")


def render_chart(helm: Any, chart: Any, values: dict | None, what: str, report: Report) -> list[Document] | None:
    try:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as error:
        report.fail(f"helm template ({what})", [str(error)])
        return None
    documents = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        try:
            documents += parse_documents(text, f"{template} [{what}]")
        except ValueError as error:
            report.fail(f"{template} [{what}]", [str(error)])
    report.ok(f"helm template ({what})", f"{len(documents)} documents")
    return documents


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_references(documents: list[Document], what: str, report: Report) -> None:
    """What the schemas cannot see: objects of the release that name each
    other."""
    errors = []
    by_kind: dict[str, list[Document]] = {}
    for document in documents:
        by_kind.setdefault(document.kind, []).append(document)
    workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    service_accounts = {(d.namespace, d.name) for d in by_kind.get("ServiceAccount", [])}
    for workload in workloads:
        pod = workload.body["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName", "default")
        if service_accounts and (workload.namespace, account) not in service_accounts:
            errors.append(f"{workload.label()}: serviceAccountName {account!r} is not rendered")
    for service in by_kind.get("Service", []):
        selector = service.body["spec"].get("selector") or {}
        pods = [w for w in workloads if w.namespace == service.namespace
                and matches(selector, w.body["spec"]["template"]["metadata"].get("labels", {}))]
        if not pods:
            errors.append(f"{service.label()}: selector {selector} selects no pod template of the release")
            continue
        port_names = {p.get("name") for w in pods for c in w.body["spec"]["template"]["spec"]["containers"]
                      for p in c.get("ports", [])}
        for port in service.body["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and target not in port_names:
                errors.append(f"{service.label()}: targetPort {target!r} is no container port of the pods "
                              f"(they have {sorted(n for n in port_names if n)})")
    for monitor in by_kind.get("ServiceMonitor", []):
        spec = monitor.body.get("spec", {})
        namespaces = (spec.get("namespaceSelector") or {}).get("matchNames") or [monitor.namespace]
        services = [s for s in by_kind.get("Service", []) if s.namespace in namespaces
                    and matches((spec.get("selector") or {}).get("matchLabels"),
                                s.body["metadata"].get("labels", {}))]
        if not services:
            errors.append(f"{monitor.label()}: selector matches no Service of the release")
        for endpoint in spec.get("endpoints", []):
            names = {p.get("name") for s in services for p in s.body["spec"].get("ports", [])}
            if endpoint.get("port") not in names:
                errors.append(f"{monitor.label()}: endpoint port {endpoint.get('port')!r} is not a port of "
                              f"the selected Services")
    roles = {("ClusterRole", "", d.name) for d in by_kind.get("ClusterRole", [])}
    roles |= {("Role", d.namespace, d.name) for d in by_kind.get("Role", [])}
    for binding in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        ref = binding.body.get("roleRef", {})
        namespace = binding.namespace if ref.get("kind") == "Role" else ""
        if (ref.get("kind"), namespace, ref.get("name")) not in roles:
            errors.append(f"{binding.label()}: roleRef {ref.get('kind')}/{ref.get('name')} is not rendered")
        for subject in binding.body.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and service_accounts and (
                    subject.get("namespace"), subject.get("name")) not in service_accounts:
                errors.append(f"{binding.label()}: subject ServiceAccount {subject.get('namespace')}/"
                              f"{subject.get('name')} is not rendered")
    report.check(f"references between objects ({what})", errors)


def check_expectations(documents: list[Document], values: dict, what: str, report: Report) -> None:
    """What the values promise: RBAC scope, arguments, optional objects."""
    errors = []
    kinds = [d.kind for d in documents]
    namespaces = values.get("watchNamespaces") or []
    if namespaces:
        if "ClusterRole" in kinds or "ClusterRoleBinding" in kinds:
            errors.append("watchNamespaces is set but a ClusterRole/ClusterRoleBinding is rendered")
        for namespace in namespaces:
            for kind in ("Role", "RoleBinding"):
                if not any(d.kind == kind and d.namespace == namespace for d in documents):
                    errors.append(f"no {kind} in watched namespace {namespace!r}")
    elif kinds.count("ClusterRole") != 1 or kinds.count("ClusterRoleBinding") != 1:
        errors.append("watchNamespaces is empty but there is not exactly one ClusterRole and ClusterRoleBinding")
    leases = [d for d in documents if d.kind == "Role" and d.namespace == NAMESPACE and any(
        "leases" in r.get("resources", []) for r in d.body.get("rules", []))]
    if len(leases) != 1:
        errors.append(f"expected one Role for leases in the release namespace {NAMESPACE}, found {len(leases)}")
    for optional, key in (("ServiceMonitor", "serviceMonitor"), ("PrometheusRule", "prometheusRule"),
                          ("ConfigMap", "grafanaDashboard")):
        enabled = bool((values.get(key) or {}).get("enabled"))
        if (optional in kinds) != enabled:
            errors.append(f"{key}.enabled is {enabled} but {optional} is {'' if optional in kinds else 'not '}"
                          f"rendered")
    deployments = [d for d in documents if d.kind == "Deployment"]
    if len(deployments) != 1:
        errors.append(f"expected one Deployment, found {len(deployments)}")
    else:
        container = deployments[0].body["spec"]["template"]["spec"]["containers"][0]
        args = container.get("args", [])
        wanted = [f"--namespace={n}" for n in namespaces]
        if [a for a in args if a.startswith("--namespace=")] != wanted:
            errors.append(f"container args {args} do not carry exactly {wanted}")
        if deployments[0].body["spec"].get("replicas") != values.get("replicaCount", 1):
            errors.append(f"replicas is {deployments[0].body['spec'].get('replicas')}, "
                          f"values say {values.get('replicaCount', 1)}")
    report.check(f"rendered objects match the values ({what})", errors)


def known_metric_names(report: Report) -> set[str] | None:
    """Metric names the Rust sources register: string literals that look
    like metric names in node/ and operator/."""
    names = set()
    for root in ("node/src", "operator/src"):
        for path in (REPO / root).rglob("*.rs"):
            names |= set(re.findall(r'"((?:etcd|grpc|nod)_[a-z0-9_]+)"', path.read_text()))
    if not names:
        report.note("found no metric names in node/src or operator/src: metric names not checked")
        return None
    return names


def promql_errors(expr: str, known: set[str] | None, allow_missing_operator: bool) -> list[str]:
    import promql_parser

    try:
        ast = promql_parser.parse(expr)
    except ValueError as error:
        return [f"PromQL does not parse: {error}: {expr}"]
    if known is None:
        return []
    selectors: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            selectors.append(node.name)

    promql_parser.walk(ast, visit)
    errors = []
    for name in selectors:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in known or base in known:
            continue
        if allow_missing_operator and name.startswith("nod_operator_"):
            continue
        errors.append(f"metric {name} is registered nowhere in node/src or operator/src")
    return errors


def check_alert_rules(documents: list[Document], known: set[str] | None, allow_missing_operator: bool,
                      report: Report) -> None:
    for document in (d for d in documents if d.kind == "PrometheusRule"):
        errors, count = [], 0
        names = set()
        for group in document.body.get("spec", {}).get("groups", []):
            for rule in group.get("rules", []):
                count += 1
                name = rule.get("alert") or rule.get("record")
                if name in names:
                    errors.append(f"{name}: defined twice")
                names.add(name)
                errors += [f"{name}: {e}" for e in promql_errors(str(rule.get("expr", "")), known,
                                                                 allow_missing_operator)]
                if rule.get("alert") and not (rule.get("labels") or {}).get("severity"):
                    errors.append(f"{name}: no severity label")
                if rule.get("for") and not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", str(rule["for"])):
                    errors.append(f"{name}: for {rule['for']!r} is not a Prometheus duration")
        report.check(f"{document.label()} alert rules", errors, f"{count} rules, PromQL parsed")


GRAFANA_RANGE_VARIABLES = ("$__rate_interval", "$__interval", "$__range")


def substitute_grafana_variables(expr: str, variables: dict[str, str]) -> str:
    for name in GRAFANA_RANGE_VARIABLES:
        expr = expr.replace(name, "5m")
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    return expr


def check_dashboard(text: str, where: str, known: set[str] | None, allow_missing_operator: bool,
                    report: Report) -> None:
    """An importable dashboard: JSON, panels with unique ids and a grid
    position, every query PromQL over known metrics through the templated
    data source."""
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as error:
        report.fail(where, [f"not JSON: {error}"])
        return
    errors = []
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dashboard:
            errors.append(f"no {key}")
    templating = dashboard.get("templating", {}).get("list", [])
    variables = {v["name"]: ("job" if v["name"].endswith("_label") else "x") for v in templating}
    if not any(v.get("type") == "datasource" and v.get("name") == "datasource" for v in templating):
        errors.append("no 'datasource' variable of type datasource")
    if "cluster" not in variables:
        errors.append("no 'cluster' variable")
    ids, queries = set(), 0
    panels = list(dashboard.get("panels", []))
    for panel in panels:
        panels.extend(panel.get("panels", []))
    for panel in panels:
        title = panel.get("title", "?")
        if panel.get("id") in ids:
            errors.append(f"panel {title!r}: id {panel.get('id')} used twice")
        ids.add(panel.get("id"))
        if "gridPos" not in panel:
            errors.append(f"panel {title!r}: no gridPos")
        if panel.get("type") == "row":
            continue
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append(f"panel {title!r}: data source is not ${{datasource}}")
        for target in panel.get("targets", []):
            queries += 1
            expr = substitute_grafana_variables(target.get("expr", ""), variables)
            errors += [f"panel {title!r}: {e}" for e in promql_errors(expr, known, allow_missing_operator)]
    for variable in templating:
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = re.fullmatch(r"label_values\((.*),\s*([^,()]+)\)", query)
        if variable.get("type") == "query" and found:
            expr = substitute_grafana_variables(found.group(1), variables)
            errors += [f"variable {variable['name']}: {e}" for e in promql_errors(expr, known,
                                                                                   allow_missing_operator)]
    report.check(where, errors, f"{len(panels)} panels, {queries} queries, PromQL parsed")


def chart_command(args: argparse.Namespace, report: Report) -> None:
    import helm_python as helm

    chart_dir = Path(args.chart_dir)
    versions = k8s_versions(args.k8s_version)
    report.note(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), kubernetes-validate "
                f"{kubernetes_validate.__version__}, Kubernetes {', '.join(versions)}")
    try:
        chart = helm.Chart.load(str(chart_dir))
    except helm.HelmError as error:
        report.fail(str(chart_dir), [f"not a loadable chart: {error}"])
        return
    with chart:
        lint_chart(helm, chart_dir, None, versions, "default values", report)
        lint_chart(helm, chart_dir, CUSTOM_VALUES, versions, "custom values", report)

        if chart.schema is None:
            report.fail(f"{chart_dir}/values.schema.json", ["the chart has no values schema"])
        else:
            accepted = []
            for values, why in BAD_VALUES:
                try:
                    chart.validate_schema(values)
                    accepted.append(f"accepted {json.dumps(values)} ({why})")
                except helm.HelmValuesError:
                    pass
            report.check(f"{chart_dir}/values.schema.json rejects bad values", accepted,
                         f"{len(BAD_VALUES)} bad value sets rejected")

        crds_dir = chart_dir / "crds"
        crd_documents = []
        for path in sorted(crds_dir.glob("*.yaml")):
            source = Path(args.crds_source) / path.name
            if not source.exists():
                report.fail(str(path), [f"{source} does not exist (the chart's CRDs are copies of crds/)"])
            elif source.read_bytes() != path.read_bytes():
                report.fail(str(path), [f"differs from {source}: copy it again "
                                        f"(cp {source} {path})"])
            else:
                report.ok(f"{path} is identical to {source}")
            crd_documents += load_files([str(path)], report)
        if not crd_documents:
            report.fail(str(crds_dir), ["no CRDs in the chart"])
        for document in crd_documents:
            validate_document(document, versions, {}, report)

        known = known_metric_names(report)
        allow_missing_operator = known is not None and not any(n.startswith("nod_operator_") for n in known)
        if allow_missing_operator:
            report.note("operator/src registers no nod_operator_* metric yet: those names are not checked")
        for what, values in (("default values", {}), ("custom values", CUSTOM_VALUES)):
            documents = render_chart(helm, chart, values, what, report)
            if documents is None:
                continue
            for document in documents:
                validate_document(document, versions, {}, report)
            merged = chart.merge_values(values)
            for check, check_args in ((check_references, (documents, what, report)),
                                      (check_expectations, (documents, merged, what, report))):
                try:
                    check(*check_args)
                except (KeyError, TypeError, IndexError, AttributeError) as error:
                    # A malformed object the schema check above has reported.
                    report.fail(f"cross-object checks ({what})", [f"malformed object: {error!r}"])
            check_alert_rules(documents, known, allow_missing_operator, report)
            for document in documents:
                if document.kind == "ConfigMap":
                    for key, text in (document.body.get("data") or {}).items():
                        if key.endswith(".json"):
                            check_dashboard(text, f"{document.label()} data.{key}", known,
                                            allow_missing_operator, report)


# ---------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="validate-manifests", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    versions_help = (f"comma-separated Kubernetes versions to validate against, 'latest' for the newest "
                     f"kubernetes-validate has (default {DEFAULT_K8S_VERSIONS})")

    k8s = sub.add_parser("k8s", help="validate manifests against the Kubernetes schemas")
    k8s.add_argument("--k8s-version", default=DEFAULT_K8S_VERSIONS, help=versions_help)
    k8s.add_argument("--crd", action="append", default=[], help="CRD file: validate its custom resources too")
    k8s.add_argument("files", nargs="+")

    cr = sub.add_parser("cr", help="validate custom resources against their CRD")
    cr.add_argument("--crd", action="append", required=True, help="CRD file (repeatable)")
    cr.add_argument("files", nargs="+")

    chart = sub.add_parser("chart", help="lint, render and validate a Helm chart")
    chart.add_argument("--k8s-version", default=DEFAULT_K8S_VERSIONS, help=versions_help)
    chart.add_argument("--crds-source", default=str(REPO / "crds"),
                       help="directory whose files the chart's crds/ must equal (default: the repository's crds/)")
    chart.add_argument("chart_dir")

    args = parser.parse_args(argv)
    report = Report()
    if args.command == "k8s":
        versions = k8s_versions(args.k8s_version)
        crds = load_crds(args.crd, report) if args.crd else {}
        for document in load_files(args.files, report):
            validate_document(document, versions, crds, report)
    elif args.command == "cr":
        crds = load_crds(args.crd, report)
        for document in load_files(args.files, report):
            crd = crds.get((document.api_version, document.kind))
            if crd is None:
                report.fail(document.label(), [f"no served version in {', '.join(args.crd)} for "
                                               f"{document.api_version} {document.kind}"])
            else:
                report.check(document.label(), validate_custom_resource(document, crd),
                             f"against {crd.crd_source} ({crd.group}/{crd.version})")
    else:
        chart_command(args, report)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
