"""One-line, actionable messages for invalid configuration files.

Configuration files are parsed with a PyYAML safe loader and validated by pydantic models. A pydantic
``ValidationError`` lists every problem with its location; :func:`describe_validation_error` turns the
first one into a single line that names the key's path, the value given and what is allowed, with a
"did you mean" suggestion for a misspelled key.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape


class ConfigError(ValueError):
    """A configuration file or override that cannot be used. Its message is one line."""


def one_line(text: str) -> str:
    """``text`` on one line: its non-empty lines joined by ``"; "`` (by a space after a colon)."""
    joined = ""
    for line in (line.strip() for line in text.strip().splitlines()):
        if line:
            joined += (" " if joined.endswith(":") else "; ") + line if joined else line
    return joined


def key_path(location: Sequence[str | int]) -> str:
    """``("tasks", 2, "budget")`` -> ``tasks[2].budget``."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def suggest(name: str, allowed: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or an empty string."""
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(model: type[BaseModel], location: Sequence[str | int]) -> list[str]:
    """The field names of the model that holds the key at ``location`` (empty when not a model)."""
    current: Any = model
    for part in location[:-1]:
        if isinstance(part, int):  # a list item: the field's annotation already led to the item's model
            continue
        if not _is_model(current) or part not in current.model_fields:
            return []
        current = _item_model(current.model_fields[part].annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _item_model(annotation: Any) -> Any:
    """The pydantic model inside ``list[M]``, ``M | None`` and the like, else the annotation itself."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _item_model(arg)
        if _is_model(found):
            return found
    return annotation


def describe_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line describing the first problem of ``error``, prefixed by ``source`` (e.g. the file name)."""
    errors = error.errors()
    # A misspelled key also makes the intended key "missing": report the misspelling. Otherwise the
    # deepest problem: of a union's alternatives (a list or a mapping), the one the value got furthest in.
    first = min(errors, key=lambda e: (e["type"] != "extra_forbidden", -len(_located(e))))
    location = _located(first)
    path = key_path(location) or "(top level)"
    if first["type"] == "extra_forbidden":
        allowed = _fields_at(model, location)
        hint = suggest(str(location[-1]), allowed) if location else ""
        allowed_text = f"; allowed keys here: {', '.join(allowed)}" if allowed else ""
        return f"{source}: unknown key {path!r}{hint}{allowed_text}"
    if first["type"] == "missing":
        return f"{source}: missing required key {path!r}"
    # Each alternative of a union of scalars fails at the same key: say every one that was allowed.
    messages = list(
        dict.fromkeys(validation_message(e) for e in errors if _located(e) == location and e["type"] != "missing")
    )
    value = first.get("input")
    return f"{source}: key {path!r} = {value!r}: {_either(messages)}"


def key_problems(error: ValidationError) -> list[tuple[str, Any, str]]:
    """Each key's problem: its path as :func:`key_path` spells it (``""`` for a check of the whole model),
    the value given and the message, the alternatives of a union said once (``Input should be 'full' or
    'head' or a valid list``) rather than one problem per alternative under pydantic's names for them."""
    grouped: dict[tuple[str | int, ...], list[Any]] = {}
    for item in error.errors():
        grouped.setdefault(tuple(_located(item)), []).append(item)
    problems = []
    for location, items in grouped.items():
        messages = list(dict.fromkeys(validation_message(item) for item in items))
        problems.append((key_path(location), items[0].get("input"), _either(messages)))
    return problems


def validation_message(error: Any) -> str:
    """The message of one of a ``ValidationError``'s ``errors()``, without the ``Value error,`` pydantic puts
    before a validator's own (crl's validators say what is wrong and name the values)."""
    return str(error["msg"]).removeprefix("Value error, ")


def _located(error: Any) -> list[str | int]:
    """An error's location without the names pydantic gives a union's alternatives.

    The last part of an unknown key's location is the key as written, whatever it looks like
    (``tasks[0]`` is a key there, not a union's alternative).
    """
    if not error["loc"]:  # a check of the whole model
        return []
    *path, last = error["loc"]
    kept = [part for part in path if not _is_union_tag(part)]
    return [*kept, last] if error["type"] == "extra_forbidden" or not _is_union_tag(last) else kept


def _either(messages: list[str]) -> str:
    """``Input should be a valid integer or a valid string`` from pydantic's message per alternative."""
    if len(messages) == 1:
        return messages[0]
    lead = "Input should be "
    if all(message.startswith(lead) for message in messages):
        rest = [message.removeprefix(lead) for message in messages]
        return f"{lead}{', '.join(rest[:-1])} or {rest[-1]}"
    return "; or ".join(messages)


def _is_union_tag(part: str | int) -> bool:
    # pydantic inserts the member type's name (e.g. "float", "function-after[...]") into union locations
    return isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "bool", "list", "dict"})


def print_error(console: Console, error: Exception) -> None:
    """Print ``error`` as one red-labelled line; its text is escaped, as ``[name, ...]`` would read as markup."""
    console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
