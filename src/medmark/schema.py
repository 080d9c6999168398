"""Defaults of the configuration, read from ``config/schema.yaml`` (their single source).

The workflow validates its config against the schema and fills the defaults before any job runs
(``rules/common.smk``). Library callers (tests, notebooks, benchmarks, ``medmark verify``) read
the same defaults here: :func:`section_defaults` walks a section's ``properties`` recursively and
takes each leaf's ``default`` (``$ref`` to ``#/definitions/...`` resolved, the referring node's
own keys winning), as the validator fills them into an empty section.

The schema is found beside the package, as in the checkout the workflow imports it from
(``src/medmark`` next to ``config/``; ``pip install -e .`` keeps that layout).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


@functools.cache
def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The parsed schema (cached per path; callers must not modify it)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the configuration schema is read from the checkout the package "
            "runs from (src/medmark beside config/)"
        )
    return yaml.safe_load(path.read_text())


def _resolved(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    target: Any = schema
    for part in ref[2:].split("/"):
        target = target[part]
    return {**_resolved(target, schema), **{k: v for k, v in node.items() if k != "$ref"}}


def node_defaults(node: dict[str, Any], schema: dict[str, Any], where: str) -> Any:
    """The defaults of one schema node: a mapping for an object with ``properties``
    (recursively), else the node's ``default`` (a copy)."""
    node = _resolved(node, schema)
    if "properties" in node:
        return {
            sys.intern(k): node_defaults(v, schema, f"{where}.{k}")
            for k, v in node["properties"].items()
        }
    if "default" not in node:
        raise ValueError(f"{where}: no default in {SCHEMA_PATH.name}")
    return _interned(node["default"])


def _interned(value: Any) -> Any:
    """A copy of a parsed YAML value with every string interned, as the string literals of
    Python source are: pickles of a config (``generator.pt`` records its ``xmark`` section)
    share equal strings by identity, so their bytes stay those of a config written in code."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {_interned(k): _interned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned(v) for v in value]
    return value


def section_defaults(section: str, path: Path | None = None) -> dict[str, Any]:
    """The defaults of the top-level config section ``section`` (a fresh copy)."""
    schema = load_schema(SCHEMA_PATH if path is None else path)
    if section not in schema["properties"]:
        raise KeyError(f"no section {section!r} in {SCHEMA_PATH.name}")
    return node_defaults(schema["properties"][section], schema, section)
