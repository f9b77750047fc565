"""Field paths into ROS 2 messages, as `dataset import-rosbag`'s stream configs give them:
`position[0:7]`, `pose.pose.position`, `points[0].positions`, `fingers[1:].force`.

A path is `name(.name)*` with `[i]` indices and `[start:stop(:step)]` slices (negative counts from
the end) after any name. Its value is a flat float vector: a message, or an array of them, gives
its numeric fields recursively in definition order (strings are skipped). `check_path` checks a
path against a type's definition (rosbags' field definitions) before any message is read;
`read_path` reads it out of a message.
"""

from __future__ import annotations

import dataclasses
import keyword
import re

import numpy as np

_SEGMENT = re.compile(r"([A-Za-z_]\w*)((?:\[[^\[\]]*\])*)")
_INT = re.compile(r"[+-]?\d+")


def parse_field_path(text: str) -> list[tuple]:
    """`a.b[2].c[1:-1]` -> [("field", "a"), ("field", "b"), ("index", 2), ("field", "c"),
    ("slice", 1, -1, None)]; ValueError says what is wrong."""
    steps: list[tuple] = []
    for segment in text.split("."):
        match = _SEGMENT.fullmatch(segment.strip())
        if not match:
            raise ValueError(f"{segment!r} is not a field name followed by optional [i] or [start:stop]")
        steps.append(("field", match[1]))
        for inside in re.findall(r"\[([^\[\]]*)\]", match[2]):
            parts = [p.strip() for p in inside.split(":")]
            if len(parts) == 1 and _INT.fullmatch(parts[0]):
                steps.append(("index", int(parts[0])))
            elif len(parts) in (2, 3) and all(p == "" or _INT.fullmatch(p) for p in parts):
                start, stop, step = [int(p) if p else None for p in [*parts, ""][:3]]
                if step == 0:
                    raise ValueError(f"[{inside}]: a slice's step cannot be 0")
                steps.append(("slice", start, stop, step))
            else:
                raise ValueError(f"[{inside}] is neither an index [i] nor a slice [start:stop(:step)]")
    return steps


def _bracket(step: tuple) -> str:
    if step[0] == "index":
        return f"[{step[1]}]"
    start, stop, stride = ("" if v is None else v for v in step[1:])
    return f"[{start}:{stop}]" if stride == "" else f"[{start}:{stop}:{stride}]"


def _out_of_range(step: tuple, n: int) -> bool:
    """Whether an index or slice does not fit an array of n values. A slice's explicit bounds must lie
    within the array: `position[0:7]` of 6 joints is an error, not 6 values."""
    if step[0] == "index":
        return not -n <= step[1] < n
    return any(v is not None and not -n <= v <= n for v in step[1:3])


class PathError(ValueError):
    """A path does not fit a message (an index past the end of its array)."""


def field_node(spec) -> tuple:
    """A rosbags field definition (Nodetype, detail) -> ("msg", type) | ("base", type) |
    ("array", element node, length; None for a sequence)."""
    kind, detail = spec
    kind = getattr(kind, "name", kind)
    if kind in ("BASE", 1):
        return ("base", detail[0])
    if kind in ("NAME", 2):
        return ("msg", detail)
    return ("array", field_node(detail[0]), detail[1] if kind in ("ARRAY", 3) else None)


def _describe(node: tuple) -> str:
    if node[0] == "array":
        return f"{_describe(node[1])}[{'' if node[2] is None else node[2]}]"
    return node[1]


def message_fields(fielddefs, msgtype: str) -> list[tuple[str, tuple]]:
    return [(name, field_node(spec)) for name, spec in fielddefs[msgtype][1]]


def describe_fields(fielddefs, msgtype: str) -> str:
    """A message's fields, for error messages: `header (std_msgs/msg/Header), position (float64[])`."""
    return (
        ", ".join(f"{name} ({_describe(node)})" for name, node in message_fields(fielddefs, msgtype))
        or "none"
    )


def _numeric(fielddefs, node: tuple) -> bool:
    if node[0] == "base":
        return node[1] not in ("string", "wstring")
    if node[0] == "array":
        return _numeric(fielddefs, node[1])
    return any(_numeric(fielddefs, child) for _, child in message_fields(fielddefs, node[1]))


def check_path(fielddefs, msgtype: str, steps: list[tuple]) -> str | None:
    """Why `steps` cannot be read out of a `msgtype` message, from its definition (None: they can;
    indices into variable-length arrays are checked on the messages)."""
    node, where = ("msg", msgtype), msgtype
    for step in steps:
        if step[0] == "field":
            if node[0] != "msg":
                return f"{where} is {_describe(node)}, not a message: it has no field {step[1]!r}"
            fields = dict(message_fields(fielddefs, node[1]))
            if step[1] not in fields:
                return f"{where} has no field {step[1]!r}; its fields: {describe_fields(fielddefs, node[1])}"
            node, where = fields[step[1]], step[1] if where == msgtype else f"{where}.{step[1]}"
            continue
        if node[0] != "array":
            return f"{where} is {_describe(node)}, not an array: it takes no {_bracket(step)}"
        if node[2] is not None and _out_of_range(step, node[2]):
            return f"{where} has {node[2]} values: {_bracket(step)} is out of range"
        if step[0] == "index" or node[1][0] == "msg":  # a slice of messages: the path goes on in each
            node = node[1]
        where += _bracket(step)
    if not _numeric(fielddefs, node):
        return f"{where} ({_describe(node)}) holds no numbers"
    return None


def _flatten(value, out: list) -> None:
    """The numbers in a field's value: numeric arrays, numbers, messages' numeric fields in order."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        out.append(value.astype(np.float64).ravel())
    elif isinstance(value, (bool, int, float, np.number, np.bool_)):
        out.append(np.array([value], np.float64))
    elif isinstance(value, (list, tuple, np.ndarray)):
        for item in value:
            _flatten(item, out)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            if f.name != "__msgtype__":
                _flatten(getattr(value, f.name), out)


def read_path(msg, steps: list[tuple]) -> np.ndarray:
    """The flat float64 vector at `steps` in a message (PathError: an index past an array's end)."""
    items, where = [msg], ""
    for step in steps:
        if step[0] == "field":
            name = step[1] + "_" if keyword.iskeyword(step[1]) else step[1]  # rosbags renames `from`
            items = [getattr(item, name) for item in items]
            where = f"{where}.{step[1]}" if where else step[1]
            continue
        picked: list = []
        for item in items:
            if _out_of_range(step, len(item)):
                raise PathError(f"{where} has {len(item)} values: {_bracket(step)} is out of range")
            if step[0] == "index":
                picked.append(item[step[1]])
            elif isinstance(item, np.ndarray):
                picked.append(item[slice(*step[1:])])
            else:  # messages: the path goes on in each
                picked.extend(item[slice(*step[1:])])
        items, where = picked, where + _bracket(step)
    out: list = []
    _flatten(items, out)
    return np.concatenate(out) if out else np.zeros(0)
