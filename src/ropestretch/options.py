"""What an entry of a registry declares about its options, once: a scaling's (``SCALINGS``), a
sampler's (``SAMPLERS``), an evaluation task's (``TASKS``), an attention method's. The command-line
flags, the training config's fields and YAML keys, the help texts and the checks of a library call
are generated from these declarations, so an option exists in one place."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ropestretch.errors import UsageError

KINDS = ("int", "float", "bool", "str")


@dataclass(frozen=True)
class Option:
    """One option: ``--NAME`` on the command line (dashes for underscores), the keyword ``NAME`` of
    the entry's function, and the key ``NAME`` of a run record.

    ``default`` is what an omitted option means (a callable is called for it, so a list is fresh
    each time); ``parse`` reads the command-line text (default: by ``kind``); ``kind`` (``int``,
    ``float``, ``bool``, ``str``) is how a YAML or library value is checked; ``choices`` bounds it."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    choices: tuple | None = None
    kind: str | None = None

    def value(self, given: Any) -> Any:
        if given is None:
            return self.default() if callable(self.default) else self.default
        if self.choices is not None and given not in self.choices:
            raise UsageError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {given!r}")
        return given

    def coerce(self, value: Any, what: str) -> Any:
        """A YAML or keyword value as this option's ``kind`` (None stays None), or one line saying why not."""
        if value is None:
            return None
        return self.value(value if self.kind is None else as_kind(value, self.kind, what))

    def shown_default(self) -> str:
        return "" if self.default is None or callable(self.default) else f" (default {self.default})"


def add_entry(registry: dict[str, Any], entry: Any, what: str) -> Any:
    """``entry`` into ``registry`` under its ``name`` (a registry of small entries, each declaring its
    options); a name already there is refused, so no entry silently replaces another."""
    if entry.name in registry:
        raise ValueError(f"{what} {entry.name!r} is already registered")
    registry[entry.name] = entry
    return entry


def as_kind(value: Any, kind: str, what: str) -> Any:
    """``value`` (from YAML, a flag or a keyword) as ``kind`` (``int``, ``float``, ``bool`` or ``str``):
    an integer-valued number for int, a finite number for float, a real bool for bool; else one line."""
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            value = int(float(value))
        elif kind == "float":
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = str(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(f"option {what} must be {kind}, got {value!r}") from None
    return value


def option_values(options: tuple[Option, ...], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """Every declared option's value (its default where not given); a given option that ``owner``
    (a scaling, a sampler, a task, an attention method) does not declare is one line naming the
    ones it does."""
    names = [o.name for o in options]
    unknown = sorted(k for k, v in given.items() if v is not None and k not in names)
    if unknown:
        raise UsageError(f"{owner} takes no option {unknown[0]!r} (its options: {', '.join(names) or 'none'})")
    return {o.name: o.value(given.get(o.name)) for o in options}


def _parse(kind: str | None) -> Callable[[str], Any] | None:
    def number(text: str, cast=float):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if cast is int else 'a number'}, "
                                             f"got {text!r}") from None
        if cast is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        return value
    return {"int": lambda t: number(t, int), "float": number}.get(kind or "")


def add_flag(parser, option: Option, dest: str, owner: str = "") -> None:
    """``option`` as a command-line flag ``--NAME`` storing into ``dest`` (None when not given)."""
    text = (f"{owner}: " if owner else "") + option.help + option.shown_default()
    flag = "--" + dest.replace("_", "-")
    if option.kind == "bool":
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif option.choices:
        parser.add_argument(flag, dest=dest, choices=option.choices, default=None, help=text)
    else:
        parser.add_argument(flag, dest=dest, type=option.parse or _parse(option.kind), default=None,
                            metavar=option.metavar or option.name.split("_")[-1].upper(), help=text)


def add_registry_flags(parser, registry: dict[str, tuple[Option, ...]], prefixed: bool = False) -> None:
    """Every entry's options as flags: ``--NAME`` (one flag per name, shared by the entries that
    declare it), or with ``prefixed`` ``--ENTRY-NAME`` (``--yarn-beta-fast``, the training config's)."""
    seen: dict[str, list[str]] = {}
    for entry, options in registry.items():
        for o in options:
            seen.setdefault(f"{entry}_{o.name}" if prefixed else o.name, []).append(entry)
    done = set()
    for entry, options in registry.items():
        for o in options:
            dest = f"{entry}_{o.name}" if prefixed else o.name
            if dest not in done:
                add_flag(parser, o, dest, ", ".join(seen[dest]))
                done.add(dest)


def chosen_options(registry: dict[str, tuple[Option, ...]], chosen: str, values: dict[str, Any], flag: str
                   ) -> dict[str, Any]:
    """From parsed flags (``values``: dest -> value, None when not given), the options the chosen
    entry takes; a flag that only another entry declares is one line naming them."""
    mine = {o.name for o in registry.get(chosen, ())}
    for options in registry.values():
        for o in options:
            if values.get(o.name) is not None and o.name not in mine:
                owners = [e for e, opts in registry.items() if any(x.name == o.name for x in opts)]
                raise UsageError(f"--{o.name.replace('_', '-')} applies to {flag} {' or '.join(owners)} only")
    return {name: values[name] for name in mine if values.get(name) is not None}
