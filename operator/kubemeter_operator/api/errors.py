"""Turn pydantic validation errors into messages that name the field, Kubernetes-style.

`spec.meters[1].pricing.tiers[0].upTo: must be a decimal string ...`: camelCase names, list
indexes in brackets. Used by the file loaders (`kubemeter quote`) and the events API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from kubemeter_operator.errors import InputError

# A model validator's message may start with the field it is about ("tiers[1].upTo: ...").
_FIELD_PREFIX_RE = re.compile(
    r"^(?P<path>[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]+\])*)*)"
    r": (?P<rest>.*)$",
    re.DOTALL,
)
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")

DISCRIMINATORS = ("kind",)
"""Fields that discriminate tagged unions in the kubemeter API (usage records: `kind`)."""


def join_path(prefix: str, loc: Sequence[int | str]) -> str:
    """`("meters", 1, "unitPrice")` under `spec` -> `spec.meters[1].unitPrice`."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _strip_tags(
    loc: Sequence[int | str], data: Any, discriminators: Sequence[str]
) -> list[int | str]:
    """Drop discriminated-union tags (`[0].gpu.allocatedMs` -> `[0].allocatedMs`).

    Pydantic puts the tag of a tagged union into the location, right after the object it
    chose a member for. With the validated input at hand we can tell the tag (the value of
    the object's discriminator field, e.g. `kind`) from a field of the same name
    (`[0].steps.steps`: the first `steps` is the tag, the second the field).
    """
    out: list[int | str] = []
    node: Any = data
    tag_allowed = True
    for part in loc:
        if (
            tag_allowed
            and isinstance(node, dict)
            and isinstance(part, str)
            and any(node.get(d) == part for d in discriminators)
        ):
            tag_allowed = False  # a union tag: stay on the same object
            continue
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        tag_allowed = True
        out.append(part)
    return out


def _message(error: ErrorDetails) -> str:
    msg = error["msg"]
    for p in _PYDANTIC_PREFIXES:
        if msg.startswith(p):
            msg = msg[len(p) :]
    return msg


def validation_issues(
    exc: ValidationError,
    prefix: str = "",
    data: Any = None,
    *,
    discriminators: Sequence[str] = DISCRIMINATORS,
) -> list[tuple[str, str]]:
    """(field path, problem) for every error in `exc`.

    `prefix` is prepended to every path; `data` (the input that was validated) lets the
    paths skip discriminated-union tags (the values of the `discriminators` fields).
    """
    issues: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        loc: list[int | str] = list(error["loc"])
        if data is not None:
            loc = _strip_tags(loc, data, discriminators)
        msg = _message(error)
        ctx = error.get("ctx") or {}
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append(str(ctx.get("discriminator", "kind")).strip("'\""))
        if error["type"] == "value_error" and (m := _FIELD_PREFIX_RE.match(msg)):
            # A model validator named the field: append it (once) to the location.
            sub = m.group("path")
            head = re.split(r"[.\[]", sub, maxsplit=1)[0]
            if loc and loc[-1] == head:
                sub = sub[len(head) :].lstrip(".")
            path = join_path(prefix, loc)
            if sub:
                path = f"{path}{'' if not path or sub.startswith('[') else '.'}{sub}"
            issues.append((path, m.group("rest")))
            continue
        issues.append((join_path(prefix, loc), msg))
    return issues


def format_validation_error(exc: ValidationError, prefix: str = "", data: Any = None) -> str:
    """Every error of `exc` as `path: problem`, one per line."""
    return "\n".join(
        f"{path}: {problem}" if path else problem
        for path, problem in validation_issues(exc, prefix, data)
    )


def input_error(
    exc: ValidationError, prefix: str = "", data: Any = None, *, where: str = ""
) -> InputError:
    """An InputError naming the first bad field; the message lists every error.

    `where` (e.g. a file name) is appended to the problem as `(in WHERE)`.
    """
    issues = validation_issues(exc, prefix, data) or [(prefix, str(exc))]
    field, problem = issues[0]
    rest = [f"{p}: {m}" if p else m for p, m in issues[1:]]
    if where:
        problem = f"{problem} (in {where})"
    if rest:
        problem += "\n" + "\n".join(rest)
    return InputError(field, problem)
