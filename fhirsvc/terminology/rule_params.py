"""What program content must know of a rule kind: its parameter model, its outcomes, the names its parameters use."""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict

NameKind = Literal["observation", "condition set", "value set", "flag", "outcome", "drug", "drug class"]


@dataclass(frozen=True)
class Names:
    """Marks a parameter whose value names something the program (or the drug catalog) defines.

    `of` (value sets only): the parameter naming the observation whose coded answers the value set belongs to.
    """

    kind: NameKind
    of: str | None = None


ObservationName = Annotated[str, Names("observation")]
ConditionSetName = Annotated[str, Names("condition set")]
FlagName = Annotated[str, Names("flag")]
OutcomeName = Annotated[str, Names("outcome")]
DrugName = Annotated[str, Names("drug")]
DrugClassName = Annotated[str, Names("drug class")]
ValueSetOfObservation = Annotated[str, Names("value set", of="observation")]


class RuleParams(BaseModel):
    """Base of every rule kind's parameter model: strict (a misspelt parameter is an error), read-only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def conditional_outcomes(self) -> frozenset[str]:
        """Outcomes the kind produces only because a parameter is set (e.g. `implausible` with `plausible_from`)."""
        return frozenset()


class RuleKindSchema(Protocol):
    """The part of a rule kind that loading checks content against (the rule registry provides it)."""

    @property
    def params(self) -> type[RuleParams]: ...

    @property
    def outcomes(self) -> frozenset[str]:
        """Outcomes the kind may produce whatever its parameters: every rule of the kind defines them all."""
        ...

    @property
    def optional_outcomes(self) -> frozenset[str]:
        """Outcomes the kind produces only when the rule defines them."""
        ...


RuleKinds = Mapping[str, RuleKindSchema]


@dataclass(frozen=True)
class NameUse:
    """One name a parameter uses: where (`params.indications[1].flag`), what kind of name, and the name; for a
    value set, the observation it belongs to."""

    field: str
    kind: NameKind
    value: str
    observation: str | None = None


def names_used(params: RuleParams) -> Iterator[NameUse]:
    """Every name the parameters use, found through the `Names` marks on the model's field types."""
    for name, info in type(params).model_fields.items():
        yield from _walk(getattr(params, name), info.annotation, info.metadata, f"params.{name}", params)


def _walk(value: Any, annotation: Any, metadata: list[Any], where: str, owner: BaseModel) -> Iterator[NameUse]:
    marks = [m for m in metadata if isinstance(m, Names)]
    if get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        marks += [m for m in extra if isinstance(m, Names)]
    if value is None:
        return
    if marks and isinstance(value, str):
        mark = marks[0]
        observation = getattr(owner, mark.of, None) if mark.of else None
        yield NameUse(where, mark.kind, value, observation if isinstance(observation, str) else None)
        return
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            yield from _walk(value, inner[0], [], where, owner)
    elif origin in (list, tuple, set, frozenset) and args:
        for index, item in enumerate(value):
            yield from _walk(item, args[0], [], f"{where}[{index}]", owner)
    elif origin is dict and len(args) == 2:
        for key, item in value.items():
            yield from _walk(key, args[0], [], f"{where} (key {key!r})", owner)
            yield from _walk(item, args[1], [], f"{where}.{key}", owner)
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _walk(getattr(value, name), info.annotation, info.metadata, f"{where}.{name}", value)


class ParamGroup(BaseModel):
    """A group of parameters nested inside a rule kind's parameters (e.g. one indication): as strict."""

    model_config = ConfigDict(extra="forbid", frozen=True)
