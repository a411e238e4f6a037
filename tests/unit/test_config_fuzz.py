"""Every config key fuzzed: any value either validates or ends in one ConfigError line naming the key.

The key list is the schema's own (validation/config/, walked through pydantic's model_fields), so a new key is
fuzzed without touching this file. Two levels: `parse` (the values as JSON objects) and `stacks.config.load`
(the values as Pulumi hands them over: a string for a plain value, JSON text for a section)."""
from __future__ import annotations

import json
import types
from typing import Optional, Union, get_args, get_origin

import pulumi
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pydantic import BaseModel

from validation.config import PROJECT, ConfigError, Settings, parse


def _submodel(annotation) -> Optional[type[BaseModel]]:
    """The section model behind a field's annotation (Optional[Kubernetes] -> Kubernetes), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        models = [m for m in map(_submodel, get_args(annotation)) if m]
        return models[0] if models else None
    return None


def schema_keys(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of the schema, sections and leaves alike, as the camelCase path of Pulumi.<stack>.yaml."""
    keys = []
    for name, field in model.model_fields.items():
        path = prefix + (field.alias or name,)
        keys.append(path)
        section = _submodel(field.annotation)
        if section is not None:
            keys.extend(schema_keys(section, path))
    return keys


KEYS = schema_keys()

# A valid section to fuzz inside of, where a section has required keys (else every nested value fails on those).
BASES = {
    "kubernetes": {"context": "ctx", "predictorImage": "registry.example.org/predictor:1",
                   "cpuModel": {"storageUri": "s3://models/mnist"}, "gpuModel": {"storageUri": "s3://models/llm"}},
    "ssh": {"target": "ssh", "ssh": {"host": "login", "user": "me"}, "sharedStorage": "/beegfs/x", "gpu": "none"},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats()
    | st.text(max_size=40) | st.sampled_from(["", "none", "ssh", "embedded", "/abs/path", "relative", "s3://b/k",
                                             "users=1", "0", "-1", "65536", "NVIDIA H200", "slurm", "true"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def _raw_with(path: tuple[str, ...], value) -> dict:
    """A raw config with `value` at `path`, inside a valid section where the section has required keys."""
    raw: dict = {}
    if path[0] == "kubernetes" and len(path) > 1:
        raw["kubernetes"] = json.loads(json.dumps(BASES["kubernetes"]))
    if path[:2] == ("hpc", "ssh") and len(path) > 2:
        raw["hpc"] = json.loads(json.dumps(BASES["ssh"]))
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    return raw


def _names_the_key(message: str, path: tuple[str, ...]) -> bool:
    """One line, prefixed by the project, naming the key or the section it sits in (a section's own rule, e.g.
    'target ssh needs sharedStorage', is reported at the section)."""
    if "\n" in message or not message.startswith(f"{PROJECT}:"):
        return False
    return any(part in message for part in path)


@pytest.mark.parametrize("path", KEYS, ids=".".join)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_parse_any_value_of_any_key(path, value):
    try:
        parse(_raw_with(path, value))
    except ConfigError as exc:
        assert _names_the_key(str(exc), path), f"{'.'.join(path)}={value!r}: {exc}"


def test_the_schema_walk_finds_nested_keys():
    assert {("hpc", "embedded", "basePort"), ("serving", "llm", "maxBatchSize"), ("kubernetes", "cpuModel"),
            ("hpc", "ssh", "knownHostsFile"), ("tasks",)} <= set(KEYS)


def _pulumi_text(value) -> str:
    """What `pulumi config set` stores: a plain value as its text, a section or list as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


class _NoResources(pulumi.runtime.Mocks):
    def new_resource(self, args):
        return args.name, args.inputs

    def call(self, args):
        return {}


@pytest.fixture(scope="module")
def pulumi_program():
    """A Pulumi program's runtime (mocked engine) named as the project, so pulumi.Config() reads our keys."""
    pulumi.runtime.set_mocks(_NoResources(), project=PROJECT, stack="fuzz", preview=False)
    yield
    pulumi.runtime.set_all_config({})


@pytest.mark.parametrize("top", sorted({path[0] for path in KEYS}))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | st.text(max_size=30))
def test_load_any_text_pulumi_hands_over(pulumi_program, top, value):
    """stacks.config.load as `pulumi up` runs it: a value that is not even JSON for a section ends in one line."""
    from stacks import config

    pulumi.runtime.set_all_config({f"{PROJECT}:{top}": _pulumi_text(value)})
    try:
        config.load()
    except pulumi.RunError as exc:
        message = str(exc).removeprefix("config error: ")
        assert _names_the_key(message, (top,)), f"{top}={value!r}: {exc}"
    finally:
        pulumi.runtime.set_all_config({})
