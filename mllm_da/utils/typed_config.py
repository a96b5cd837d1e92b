"""Typed config nodes: one generic check of a config node against a dataclass (its schema).

A schema's annotations give each key's type (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
mappings, lists, nested schemas) and :func:`option` metadata its range, choices, a custom check or the condition under
which the key matters. :func:`load` turns a node (a ``DictConfig`` or a mapping) into the dataclass, or raises
:class:`ConfigError` listing every problem, each naming the full dotted key and what to change. A schema may also
define ``rules(self, path) -> list[str]`` for rules that tie its own keys together (run once every key is valid) and
an ``EXTRA_KEYS`` class attribute: keys it accepts unchecked (``"*"``: any). ``_target_`` is always accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, ListConfig, OmegaConf

Schema = TypeVar("Schema")
_META = "typed_config"
_INTEGER = re.compile(r"[+-]?\d+")
_NONE = type(None)


class ConfigError(ValueError):
    """A config that cannot run; the message names the option(s) and a fix."""


@dataclasses.dataclass(frozen=True)
class Rules:
    """What a field's value must satisfy beyond its annotated type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    #: values accepted outside the range (``-1`` for "all")
    special: tuple[Any, ...] = ()
    choices: Collection[Any] | None = None
    #: the allowed keys of a mapping field
    keys: Collection[str] | None = None
    #: a check of its own: the problem (what follows the key in the message), or None; for values no type says
    check: Callable[[Any], str | None] | None = None
    #: the key is checked only when this holds for the (raw) node
    when: Callable[[Any], bool] | None = None


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with :class:`Rules` (``ge``, ``gt``, ``le``, ``lt``, ``special``, ``choices``, ``keys``,
    ``check``, ``when``)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META: Rules(**rules)})


def rules_of(field: dataclasses.Field) -> Rules:
    return field.metadata.get(_META, Rules())


def has_default(field: dataclasses.Field) -> bool:
    return field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING


def default_of(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


# --------------------------------------------------------------------------------------------- values


def plain(value: Any) -> Any:
    """A config node as plain Python containers (interpolations resolved); any other value as it is."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _bounds(rules: Rules) -> str | None:
    """The range as text (``[0.0, 1.0)``, ``>= 1``), or None when unbounded."""
    low = rules.ge if rules.ge is not None else rules.gt
    high = rules.le if rules.le is not None else rules.lt
    if low is None and high is None:
        return None
    if high is None and rules.ge is not None and isinstance(rules.ge, int):
        return f">= {rules.ge}"
    left, right = "[" if rules.gt is None else "(", "]" if rules.lt is None else ")"
    return f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def _in_range(number: float, rules: Rules) -> bool:
    return not (
        (rules.ge is not None and number < rules.ge)
        or (rules.gt is not None and number <= rules.gt)
        or (rules.le is not None and number > rules.le)
        or (rules.lt is not None and number >= rules.lt)
    )


def _range_problem(key: str, value: Any, number: float, rules: Rules, nullable: bool) -> str | None:
    if value in rules.special or _in_range(number, rules):
        return None
    bounds = _bounds(rules) or ""
    also = "".join(f" or {s}" for s in rules.special) + (" or null" if nullable else "")
    verb = "be" if bounds.startswith(">") else "lie in"
    return f"{key} must {verb} {bounds}{also}, got {value!r}"


def check_value(value: Any, kind: Any, key: str, rules: Rules = Rules()) -> tuple[Any, list[str]]:
    """``value`` converted to ``kind`` (digit strings to numbers, config nodes to plain containers, mappings to
    nested schemas) and the problems found, each starting with ``key``."""
    origin, args = get_origin(kind), get_args(kind)
    nullable = False
    if origin in (Union, types.UnionType):
        nullable = _NONE in args
        options = [a for a in args if a is not _NONE]
        if value is None and nullable:
            return None, []
        kind = options[0] if len(options) == 1 else Any
        origin, args = get_origin(kind), get_args(kind)
    if rules.check is not None:
        problem = rules.check(value)
        if problem:  # "must be ..." after the key, or "=<value> is not ..." attached to it
            return value, [f"{key}{'' if problem.startswith('=') else ' '}{problem}"]
    if kind is Any:
        return plain(value), []
    if value is None:
        name = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "set")
        return None, [f"{key} must be {name}, got null"]
    if dataclasses.is_dataclass(kind):
        schema = cast("type[Any]", kind)  # an annotation: a dataclass type, never an instance
        if isinstance(value, schema):  # built in Python already
            return value, _instance_problems(value, key)
        return try_load(value, schema, key)
    if origin is Literal or rules.choices is not None:
        choices = list(args) if origin is Literal else sorted(rules.choices or ())
        return value, [] if value in choices else [f"{key} must be one of {choices}, got {value!r}"]
    if kind is bool:
        return value, [] if isinstance(value, bool) else [f"{key} must be true or false, got {value!r}"]
    if kind is int:
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return value, [f"{key} must be an integer, got {value!r}"]
        problem = _range_problem(key, value, value, rules, nullable)
        return value, [problem] if problem else []
    if kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = value = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            return value, [f"{key} must be a finite number, got {value!r}"]
        problem = _range_problem(key, value, number, rules, nullable)
        return value, [problem] if problem else []
    if kind is str:
        return value, [] if isinstance(value, str) else [f"{key} must be a string, got {value!r}"]
    if origin in (dict, Mapping) or kind in (dict, Mapping):
        return _check_mapping(value, args, key, rules)
    if origin in (list, tuple, Sequence) or kind in (list, tuple):
        if isinstance(value, str) or not isinstance(value, (ListConfig, list, tuple)):
            return value, [f"{key} must be a list, got {value!r}"]
        item_kind = args[0] if origin is list and args else Any
        items, problems = [], []
        for i, item in enumerate(value):
            converted, found = check_value(item, item_kind, f"{key}[{i}]")
            items.append(converted)
            problems += found
        return (tuple(items) if tuple in (origin, kind) else items), problems
    raise TypeError(f"{key}: no check for type {kind!r}")  # a schema's mistake, not the user's


def _check_mapping(value: Any, args: tuple[Any, ...], key: str, rules: Rules) -> tuple[Any, list[str]]:
    if not isinstance(value, (DictConfig, Mapping)):
        return value, [f"{key} must be a mapping, got {value!r}"]
    item_kind = args[1] if len(args) == 2 else Any
    out, problems = {}, []
    for name in value:
        if rules.keys is not None and name not in rules.keys:
            problems.append(f"{key}.{name}: unknown key; use one of {list(rules.keys)}")
            continue
        out[name], found = check_value(_read(value, name, f"{key}.{name}", problems), item_kind, f"{key}.{name}")
        problems += found
    return out, problems


def _read(node: Any, name: str, key: str, problems: list[str]) -> Any:
    """``node[name]`` resolved; an unresolvable interpolation is a problem, a ``???`` value reads as null."""
    if isinstance(node, DictConfig):
        if OmegaConf.is_missing(node, name):
            return None
        try:
            return node[name]
        except Exception as err:  # an interpolation that does not resolve
            problems.append(f"{key} cannot be read: {type(err).__name__}: {err}")
            return None
    return node[name]


# --------------------------------------------------------------------------------------------- nodes


def _fields_problems(node: Any, schema: type, path: str) -> tuple[dict[str, Any], list[str]]:
    """Every key of ``node`` checked against ``schema``'s fields: the converted values and the problems."""
    if not isinstance(node, (DictConfig, Mapping)):
        names = [f.name for f in dataclasses.fields(schema)]
        return {}, [f"{path} must be a mapping with keys {names}, got {node!r}"]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    extra = getattr(schema, "EXTRA_KEYS", ())
    unknown = sorted(k for k in node if k not in fields and k != "_target_" and extra != "*" and k not in extra)
    where = path or "the top level"
    problems = [f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}"] if unknown else []
    hints = get_type_hints(schema)
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if not field.init:
            continue
        key = f"{path}.{name}" if path else name
        if name not in node:
            if not has_default(field):
                problems.append(f"{key} is missing")
            continue
        rules = rules_of(field)
        raw = _read(node, name, key, problems)
        if rules.when is not None and not rules.when(node):
            values[name] = plain(raw)
            continue
        values[name], found = check_value(raw, hints[name], key, rules)
        problems += found
    return values, problems


def _partial_rules(schema: type, values: dict[str, Any], path: str) -> list[str]:
    """The node rules on a node with invalid keys, so that one message names every problem: run on the values as
    they are (defaults for absent keys); a rule that cannot read them says nothing."""
    rules = getattr(schema, "rules", None)
    if not callable(rules):
        return []
    defaults = {f.name: default_of(f) for f in dataclasses.fields(schema) if has_default(f)}
    try:
        return list(rules(types.SimpleNamespace(**(defaults | values)), path))
    except Exception:  # noqa: BLE001 - a value of the wrong type: its own problem is reported already
        return []


def try_load(node: Any, schema: type[Schema], path: str) -> tuple[Schema | None, list[str]]:
    """``node`` as a ``schema`` instance and its problems (the instance is None when a key has one)."""
    values, problems = _fields_problems(node, schema, path)
    if problems:
        return None, problems + _partial_rules(schema, values, path)
    try:
        instance = schema(**values)
    except ValueError as err:  # a schema that checks itself in __post_init__
        return None, [str(err)]
    rules = getattr(instance, "rules", None)
    return instance, list(rules(path)) if callable(rules) else []


def field_value(node: Any, schema: type, name: str, path: str) -> tuple[Any, list[str]]:
    """One key of ``node`` checked by ``schema``'s field ``name`` (its default when absent)."""
    field = next(f for f in dataclasses.fields(schema) if f.name == name)
    key = f"{path}.{name}" if path else name
    if name not in node:
        return (default_of(field), []) if has_default(field) else (None, [f"{key} is missing"])
    found: list[str] = []
    raw = _read(node, name, key, found)
    value, more = check_value(raw, get_type_hints(schema)[name], key, rules_of(field))
    return value, found + more


def load(node: Any, schema: type[Schema], path: str) -> Schema:
    """``node`` as a ``schema`` instance; a ConfigError lists every problem."""
    instance, found = try_load(node, schema, path)
    if found:
        raise ConfigError("; ".join(found))
    assert instance is not None
    return instance


def _instance_problems(instance: Any, path: str, rules: bool = True) -> list[str]:
    schema = type(instance)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(schema) if f.init}
    found = _fields_problems(values, schema, path)[1]
    node_rules = getattr(instance, "rules", None) if rules else None
    return found if found or not callable(node_rules) else list(node_rules(path))


def validate(instance: Any, path: str, *, rules: bool = True) -> None:
    """Check a schema instance built in Python (not from a config) by the same rules; a ConfigError lists them.
    ``rules=False`` checks each key alone (for ``__post_init__``: a spec may be completed before it is used)."""
    raise_problems(_instance_problems(instance, path, rules))


def raise_problems(found: Sequence[str]) -> None:
    if found:
        raise ConfigError("; ".join(found))
