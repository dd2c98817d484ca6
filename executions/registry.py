"""Registry of runnable targets: ``@agent("name")`` functions and ``@pipeline("name")`` step lists.

Apps register theirs in an ``agents.py`` module, discovered at start-up like ``admin.py``::

    from executions.registry import agent, pipeline

    @agent("shout", inputs=ShoutInputs)
    def shout(inputs, ctx):
        return {"text": inputs["text"].upper()}

    pipeline("report", steps=[normalize, summarize], inputs=ReportInputs)

An agent is ``fn(inputs, ctx) -> dict``. A pipeline step is ``fn(data, ctx) -> dict``: ``data``
starts as the validated inputs and each step's return value is the next step's ``data``; the
last one is the outputs. Inputs are declared as a DRF ``Serializer`` class, which gives the API
its 400 messages and ``/api/v1/targets`` its field list.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rest_framework import serializers

from executions.models import ExecutionType

AgentFunction = Callable[[dict, Any], Any]
StepFunction = Callable[[dict, Any], Any]


class TargetNotFound(LookupError):
    pass


class InputsInvalid(ValueError):
    def __init__(self, errors: Any) -> None:
        super().__init__(str(errors))
        self.errors = errors


@dataclass(frozen=True)
class RetryPolicy:
    """How a target's failures are retried, unless a request's ``config`` says otherwise
    (``max_attempts``, ``retry_backoff``, within the API's bounds).

    ``max_attempts``: tries in all (1: a failure is final). ``retry_backoff``: seconds before the
    first retry, doubling at each. ``retry_on``: the ``error.type`` values worth a retry (the
    exception's class name, ``TargetFailed`` …); None retries every failure."""

    max_attempts: int = 1
    retry_backoff: float = 1.0
    retry_on: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 20:
            raise ValueError("max_attempts must be between 1 and 20")
        if not 0 <= self.retry_backoff <= 300:
            raise ValueError("retry_backoff must be between 0 and 300 seconds")

    def retries(self, error_type: str) -> bool:
        return self.retry_on is None or error_type in self.retry_on

    def describe(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "retry_backoff": self.retry_backoff,
            "retry_on": list(self.retry_on) if self.retry_on is not None else None,
        }


def _retry_policy(
    max_attempts: int | None, retry_backoff: float | None, retry_on: Sequence[str] | None
) -> RetryPolicy:
    defaults = RetryPolicy()
    return RetryPolicy(
        max_attempts=max_attempts if max_attempts is not None else defaults.max_attempts,
        retry_backoff=retry_backoff if retry_backoff is not None else defaults.retry_backoff,
        retry_on=tuple(retry_on) if retry_on is not None else None,
    )


def _concurrency(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError("concurrency must be a whole number of at least 1 (None: no limit)")
    return value


@dataclass(frozen=True)
class Step:
    name: str
    function: StepFunction


def step(name: str) -> Callable[[StepFunction], Step]:
    """Give a pipeline step a display name other than its function name."""

    def wrap(function: StepFunction) -> Step:
        return Step(name=name, function=function)

    return wrap


def _as_step(item: Step | StepFunction) -> Step:
    if isinstance(item, Step):
        return item
    return Step(name=item.__name__.replace("_", " "), function=item)


@dataclass
class Target:
    id: str
    type: str
    description: str
    # builtins.type: in the class body, `type` names the field above.
    inputs: builtins.type[serializers.Serializer] | None
    agent_function: AgentFunction | None = None
    static_steps: list[Step] | None = None
    # For pipelines whose steps depend on the inputs (e.g. `countdown`).
    steps_factory: Callable[[dict], Sequence[Step | StepFunction]] | None = None
    steps_description: list[str] = field(default_factory=list)
    # At most this many of its executions run at once, across all workers (None: no limit);
    # the others wait pending.
    concurrency: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def validate_inputs(self, raw_inputs: Any) -> dict:
        """Validated inputs with defaults applied, or ``InputsInvalid`` naming each problem."""
        if not isinstance(raw_inputs, dict):
            raise InputsInvalid({"inputs": ["Must be a JSON object."]})
        if self.inputs is None:
            return dict(raw_inputs)
        serializer = self.inputs(data=raw_inputs)
        unknown = sorted(set(raw_inputs) - set(serializer.fields))
        if unknown:
            raise InputsInvalid(
                {name: [f"Unknown input for {self.type} '{self.id}'."] for name in unknown}
            )
        if not serializer.is_valid():
            raise InputsInvalid(serializer.errors)
        return dict(serializer.validated_data)

    def steps_for(self, inputs: dict) -> list[Step]:
        if self.steps_factory is not None:
            return [_as_step(item) for item in self.steps_factory(inputs)]
        return list(self.static_steps or [])

    def describe_steps(self) -> list[str]:
        if self.static_steps is not None:
            return [s.name for s in self.static_steps]
        return list(self.steps_description)

    def describe_inputs(self) -> list[dict]:
        if self.inputs is None:
            return []
        described = []
        for name, serializer_field in self.inputs().fields.items():
            default = serializer_field.default
            described.append(
                {
                    "name": name,
                    "type": _FIELD_TYPES.get(type(serializer_field), "string"),
                    "required": serializer_field.required,
                    "default": None if default is serializers.empty else default,
                    "description": str(serializer_field.help_text or ""),
                }
            )
        return described


_FIELD_TYPES: dict[type, str] = {
    serializers.CharField: "string",
    serializers.IntegerField: "integer",
    serializers.FloatField: "number",
    serializers.BooleanField: "boolean",
    serializers.DictField: "object",
    serializers.JSONField: "any",
    serializers.ListField: "array",
}


class Registry:
    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], Target] = {}

    def register(self, target: Target) -> Target:
        key = (target.type, target.id)
        if key in self._targets:
            raise ValueError(f"{target.type} '{target.id}' is already registered")
        self._targets[key] = target
        return target

    def unregister(self, type_: str, target_id: str) -> None:
        self._targets.pop((type_, target_id), None)

    def get(self, type_: str, target_id: str) -> Target:
        try:
            return self._targets[(type_, target_id)]
        except KeyError:
            other = [t for (ty, tid), t in self._targets.items() if tid == target_id]
            if other:
                raise TargetNotFound(
                    f"'{target_id}' is a {other[0].type}, not an {type_}"
                    if type_ == ExecutionType.AGENT
                    else f"'{target_id}' is an {other[0].type}, not a {type_}"
                ) from None
            raise TargetNotFound(f"No {type_} named '{target_id}' is registered.") from None

    def find(self, target_id: str) -> list[Target]:
        return [t for (ty, tid), t in self._targets.items() if tid == target_id]

    def all(self) -> list[Target]:
        return sorted(self._targets.values(), key=lambda t: (t.type, t.id))

    def target_ids(self) -> list[str]:
        return sorted({tid for (_, tid) in self._targets})

    def retry_policy(self, type_: str, target_id: str) -> RetryPolicy:
        """The target's retry policy; the default (no retry) for a target no longer registered."""
        target = self._targets.get((type_, target_id))
        return target.retry if target is not None else RetryPolicy()

    def concurrency_limits(self) -> dict[str, int]:
        """target id -> its concurrency limit, for the targets that have one."""
        return {
            target.id: target.concurrency
            for target in self._targets.values()
            if target.concurrency is not None
        }


registry = Registry()


def _description(function: Callable | None, description: str | None) -> str:
    if description is not None:
        return description
    doc = (function.__doc__ or "").strip() if function else ""
    return doc.split("\n\n")[0].replace("\n", " ")


def agent(
    name: str,
    *,
    inputs: type[serializers.Serializer] | None = None,
    description: str | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    retry_backoff: float | None = None,
    retry_on: Sequence[str] | None = None,
) -> Callable[[AgentFunction], AgentFunction]:
    """Register ``fn(inputs, ctx) -> outputs`` as agent ``name``.

    ``concurrency``: at most that many of its executions run at once (the rest wait pending).
    ``max_attempts``, ``retry_backoff``, ``retry_on``: its ``RetryPolicy``."""
    limit = _concurrency(concurrency)
    policy = _retry_policy(max_attempts, retry_backoff, retry_on)

    def decorate(function: AgentFunction) -> AgentFunction:
        registry.register(
            Target(
                id=name,
                type=ExecutionType.AGENT,
                description=_description(function, description),
                inputs=inputs,
                agent_function=function,
                concurrency=limit,
                retry=policy,
            )
        )
        return function

    return decorate


def pipeline(
    name: str,
    *,
    steps: Sequence[Step | StepFunction] | None = None,
    inputs: type[serializers.Serializer] | None = None,
    description: str | None = None,
    steps_description: Sequence[str] = (),
    concurrency: int | None = None,
    max_attempts: int | None = None,
    retry_backoff: float | None = None,
    retry_on: Sequence[str] | None = None,
):
    """Register pipeline ``name``.

    With ``steps=[...]`` it registers at once and returns the ``Target``. Used as a decorator, it
    registers a function ``(inputs) -> steps`` for pipelines whose steps depend on their inputs.
    ``concurrency`` and the retry policy: as for ``agent``.
    """
    limit = _concurrency(concurrency)
    policy = _retry_policy(max_attempts, retry_backoff, retry_on)
    if steps is not None:
        return registry.register(
            Target(
                id=name,
                type=ExecutionType.PIPELINE,
                description=description or "",
                inputs=inputs,
                static_steps=[_as_step(s) for s in steps],
                concurrency=limit,
                retry=policy,
            )
        )

    def decorate(factory: Callable[[dict], Sequence[Step | StepFunction]]):
        registry.register(
            Target(
                id=name,
                type=ExecutionType.PIPELINE,
                description=_description(factory, description),
                inputs=inputs,
                steps_factory=factory,
                steps_description=list(steps_description),
                concurrency=limit,
                retry=policy,
            )
        )
        return factory

    return decorate
