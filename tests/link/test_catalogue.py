"""
relay.link.catalogue: the compiled validators (fastjsonschema, draft 7)
accept exactly what jsonschema (2020-12) accepts, for every message type
relay registers, on bodies generated from each schema and bent out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from twisted.trial.unittest import SynchronousTestCase

from relay import download_messages, job_messages, sync_messages, transfer_messages
from relay.link.catalogue import Catalogue, InvalidBody, compilable
from relay.link.envelope import Envelope

# Any JSON value, small.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def relay_catalogue() -> Catalogue:
    catalogue = Catalogue()
    sync_messages.register_types(catalogue)
    transfer_messages.register_types(catalogue)
    download_messages.register_types(catalogue)
    job_messages.register_types(catalogue)
    return catalogue


def _branches(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """
    The shapes of an object whose C{allOf} holds C{if}/C{then} pairs: one
    per pair, the condition's constants fixed and the branch's properties
    merged in.  Without such pairs, the schema itself.
    """
    pairs = [s for s in schema.get("allOf", []) if "if" in s and "then" in s]
    if not pairs:
        return [schema]
    shapes = []
    for pair in pairs:
        properties = dict(schema.get("properties", {}))
        for name, condition in pair["if"].get("properties", {}).items():
            if "const" in condition:
                properties[name] = {"const": condition["const"]}
        properties.update(pair["then"].get("properties", {}))
        required = [*schema.get("required", []), *pair["then"].get("required", [])]
        shapes.append({**schema, "properties": properties, "required": required, "allOf": []})
    return shapes


def bodies(schema: Any, depth: int = 0, clean: bool = False) -> st.SearchStrategy[Any]:
    """
    Values near C{schema}: mostly the shapes it describes, with values at
    and just past its bounds, and now and then something else entirely.
    C{clean}: only the shapes, within the bounds (meant to be valid).
    """
    if not isinstance(schema, Mapping) or depth > 8:
        return ANY_JSON
    shaped = [_shaped(branch, depth, clean) for branch in _branches(schema)]
    if clean:
        return st.one_of(shaped)
    # Seven in eight draws keep to the shape, at every level.
    return st.one_of(*shaped * 7, ANY_JSON)


def _shaped(schema: Mapping[str, Any], depth: int, clean: bool) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = []
    if "enum" in schema:
        options.append(st.sampled_from(list(schema["enum"])))
    if "const" in schema:
        options.append(st.just(schema["const"]))
    options += [bodies(sub, depth + 1, clean) for key in ("anyOf", "oneOf") for sub in schema.get(key, [])]
    kinds = schema.get("type", "object" if "properties" in schema else [])
    for kind in [kinds] if isinstance(kinds, str) else kinds:
        options.append(_of_type(kind, schema, depth, clean))
    return st.one_of(options) if options else ANY_JSON


def _of_type(kind: str, schema: Mapping[str, Any], depth: int, clean: bool) -> st.SearchStrategy[Any]:
    if kind == "object":
        properties = schema.get("properties", {})
        required = [name for name in schema.get("required", []) if name in properties]
        optional = {name: bodies(s, depth + 1, clean) for name, s in properties.items() if name not in required}
        shaped = st.fixed_dictionaries(
            {name: bodies(properties[name], depth + 1, clean) for name in required}, optional=optional
        )
        if clean:
            return shaped
        extra = st.dictionaries(st.sampled_from(["zz", *properties]), ANY_JSON, max_size=1)
        return st.tuples(shaped, extra, st.integers(0, 7)).map(lambda t: {**t[0], **t[1]} if t[2] == 0 else t[0])
    if kind == "array":
        low, high = schema.get("minItems", 0), min(schema.get("maxItems", 3), schema.get("minItems", 0) + 3)
        items = bodies(schema.get("items", {}), depth + 1, clean)
        if clean:
            return st.lists(items, min_size=low, max_size=high)
        return st.lists(items, min_size=max(0, low - 1), max_size=high + 1)
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 8)
        if "pattern" in schema:
            matching = st.from_regex(schema["pattern"], fullmatch=True)
            return matching if clean else st.one_of(matching, matching, matching, st.text(max_size=4))
        if clean:
            return st.text(min_size=low, max_size=min(high, low + 8))
        short = st.text(min_size=max(0, low - 1), max_size=min(high, low + 8) + 1)
        if "maxLength" not in schema:
            return short
        return st.one_of(short, short, short, st.text(min_size=high, max_size=high + 1))
    if kind in ("integer", "number"):
        low, high = schema.get("minimum", -5), schema.get("maximum", 2**63)
        edges = st.sampled_from([low - 1, low, high, high + 1])
        inside = st.integers(low, min(high, low + 1000))
        if clean:
            return inside
        numbers: st.SearchStrategy[Any] = st.one_of(inside, inside, inside, edges)
        if kind == "number":
            numbers = numbers | st.floats(allow_nan=False, allow_infinity=False)
        return numbers | numbers.map(float)  # 3.0 is an integer in both drafts
    if kind == "boolean":
        return st.booleans()
    return st.none()


CATALOGUE = relay_catalogue()
TYPES = sorted(CATALOGUE._types)


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """
    Every place in a JSON value, the value itself included.
    """
    places = [path]
    if isinstance(value, dict):
        for key, inner in value.items():
            places += _places(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            places += _places(inner, (*path, index))
    return places


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


def _bent(old: Any) -> st.SearchStrategy[Any]:
    """
    What one place may become: anything, or the same kind of value pushed
    past the usual limits (longer, bigger, one more key or item, one less).
    """
    options = [ANY_JSON, st.sampled_from([-1, 0, 10_001, 2**63, 2.5, "", None, True])]
    if isinstance(old, str):
        options.append(st.integers(1, 2100).map(lambda n: old + "x" * n))
    if isinstance(old, dict) and old:
        options.append(st.sampled_from(sorted(old)).map(lambda k: {n: v for n, v in old.items() if n != k}))
        options.append(st.just({**old, "zz": 1}))
    if isinstance(old, list) and old:
        options.append(st.integers(2, 1001).map(lambda n: (old * n)[: len(old) + n]))
        options.append(st.just(old[1:]))
    return st.one_of(options)


@st.composite
def typed_bodies(draw: st.DrawFn) -> tuple[tuple[str, int], Any]:
    """
    A type, and a body: near its schema, or meant to be valid and then
    bent in one place.
    """
    key = draw(st.sampled_from(TYPES))
    clean = draw(st.booleans())
    body = draw(bodies(CATALOGUE._types[key][0].schema, clean=clean))
    if clean and draw(st.integers(0, 7)):
        path = draw(st.sampled_from(_places(body)))
        old = body
        for step in path:
            old = old[step]
        body = _replaced(body, path, draw(_bent(old)))
    return key, body


class CompiledAgreesWithJsonschema(SynchronousTestCase):
    def test_every_relay_type_is_compiled(self) -> None:
        self.assertEqual(sorted(CATALOGUE._fast), TYPES)

    @settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
    @given(typed_bodies())
    def test_same_verdict(self, typed: tuple[tuple[str, int], Any]) -> None:
        key, body = typed
        full = CATALOGUE._types[key][1].is_valid(body)
        try:
            CATALOGUE._fast[key](body)
            fast = True
        except Exception:
            fast = False
        self.assertEqual(fast, full, f"{key}: {body!r}")

    def test_the_generator_reaches_valid_bodies_of_every_type(self) -> None:
        # Otherwise the agreement above would say little.
        for key in TYPES:
            kind, validator = CATALOGUE._types[key]
            find(
                bodies(kind.schema), validator.is_valid,
                settings=settings(max_examples=5000, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)),
            )


class Fallback(SynchronousTestCase):
    SCHEMA = {
        "type": "object",
        "properties": {"pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}},
        "$defs": {"unused": {"type": "string"}},
    }

    def test_keywords_draft_7_reads_otherwise_are_not_compiled(self) -> None:
        self.assertFalse(compilable(self.SCHEMA))
        self.assertFalse(compilable({"$ref": "#/$defs/x"}))
        self.assertFalse(compilable({"properties": {"a": {"unevaluatedProperties": False}}}))
        self.assertTrue(compilable({"allOf": [{"if": {"const": 1}, "then": {"minimum": 0}}]}))

    def test_such_a_schema_is_validated_by_jsonschema(self) -> None:
        catalogue = Catalogue()
        catalogue.register("x", self.SCHEMA)
        self.assertNotIn(("x", 1), catalogue._fast)
        catalogue.validate(Envelope("x", "a", 0.0, {"pair": [1, "b", None]}))
        with self.assertRaises(InvalidBody) as e:
            catalogue.validate(Envelope("x", "a", 0.0, {"pair": ["b", 1]}))
        self.assertIn("x: pair/", str(e.exception))
        self.assertTrue(Draft202012Validator(self.SCHEMA).is_valid({"pair": [1]}))

    def test_a_compiled_rejection_is_worded_by_jsonschema(self) -> None:
        catalogue = Catalogue()
        catalogue.register("y", {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}})
        with self.assertRaises(InvalidBody) as e:
            catalogue.validate(Envelope("y", "a", 0.0, {"n": 2}))
        self.assertEqual(str(e.exception), "y: n: 2 is less than the minimum of 3")
