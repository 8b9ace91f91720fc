"""Hypothesis strategies for input records: JSON of any shape, and JSON text that only a
lenient parser reads (the decoder fuzz tests and the end-to-end poison property test)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=5), st.dictionaries(st.text(max_size=8), c, max_size=5)), max_leaves=20)
messages = st.fixed_dictionaries(
    {}, optional={"key": json_values, "ts": st.one_of(json_values, st.floats(), st.text()),
                  "value": st.one_of(json_values, st.floats()),
                  "values": st.one_of(json_values, st.lists(st.floats(), max_size=4)),
                  "features": json_values})

# JSON text orjson refuses and Python's json reads: numbers beyond float32 / float64 / 64
# bits, NaN and Infinity, lone surrogates; and timestamps at and beyond datetime's range
number_texts = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats().map(lambda x: json.dumps(x)),
    st.from_regex(r"-?[0-9]{1,3}(\.[0-9]{1,3})?[eE][+-]?[0-9]{1,3}", fullmatch=True),
    st.sampled_from(["1e400", "-1e400", "1e39", "3.4028235677973366e+38", "1e-400",
                     "253402300799", "253402300800", "-62135596800", "-62135596801", "1e11"]),
)
unicode_texts = st.text(st.characters(categories=["Cs", "Ll", "Lo", "Nd", "So", "Cc"]),
                        max_size=6).map(json.dumps)  # surrogates come out as \udXXX escapes
time_texts = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: json.dumps(d.isoformat())),
    st.from_regex(r"[0-9]{4,6}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:00:00(Z|[+-][01][0-9]:00)?",
                  fullmatch=True).map(json.dumps),
    number_texts.map(json.dumps),  # epoch seconds as a string
)
field_texts = {
    "key": st.one_of(unicode_texts, number_texts, st.just("null")),
    "ts": st.one_of(number_texts, time_texts, unicode_texts),
    "value": st.one_of(number_texts, unicode_texts),
    "values": st.lists(number_texts, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
    "features": st.lists(number_texts, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
}
lenient_messages = st.fixed_dictionaries({}, optional=field_texts).map(
    lambda d: ("{" + ",".join(f'"{k}":{v}' for k, v in d.items()) + "}").encode())
