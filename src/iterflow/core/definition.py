"""Flow definitions and the registry of flows known to this process."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, Literal, TypeVar

from pydantic import ValidationError

from iterflow.core import codec
from iterflow.core.errors import (
    ConfigInvalid,
    FlowDefinitionError,
    InputInvalid,
    OutputInvalid,
    SignalPayloadInvalid,
    SignalUnknown,
)
from iterflow.core.limits import DEFAULT_QUEUE, Gate, Limits

__all__ = ["DriftPolicy", "FlowDef", "Registry", "validate_signal_payload"]

In = TypeVar("In")
Out = TypeVar("Out")

#: What a worker does with a run whose history no longer matches the code (or whose version is
#: no longer registered): ``fail`` it, or ``park`` it until a deploy restores compatibility.
DriftPolicy = Literal["fail", "park"]

_NO_LIMIT = 2**62
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")


@dataclass(frozen=True)
class FlowDef(Generic[In, Out]):
    """A named, versioned flow: its body and the models of its input, output and signals.

    ``body`` is ``async def body(ctx, input)`` where ``ctx`` is an
    :class:`iterflow.core.ctx.Ctx` (typed loosely here: :mod:`iterflow.core.ctx` builds on this
    module, and the typed entry points, ``engine.flow`` and the builder, check the body).
    """

    name: str
    version: int
    input_type: Any
    output_type: Any
    body: Callable[[Any, Any], Awaitable[Any]]
    signals: Mapping[str, Any] = field(default_factory=dict)
    drift_policy: DriftPolicy = "fail"
    #: Every run of this flow started without its own ``deadline=`` fails with
    #: ``RUN_DEADLINE_EXCEEDED`` if still live this long after its start.
    deadline: timedelta | None = None
    #: The queue that routes this flow's runs: workers serve queues (``--queues``).
    queue: str = DEFAULT_QUEUE
    #: Concurrency and rate limits of its runs (:mod:`iterflow.core.limits`), None: unlimited.
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise FlowDefinitionError(
                f"invalid flow name {self.name!r}: use 1-200 letters, digits or _ . : -"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise FlowDefinitionError(
                f"flow {self.name!r}: version must be a positive integer, got {self.version!r}"
            )
        for sig in self.signals:
            if not isinstance(sig, str) or not _NAME.match(sig):
                raise FlowDefinitionError(f"flow {self.name!r}: invalid signal name {sig!r}")
        if self.deadline is not None and (
            not isinstance(self.deadline, timedelta) or self.deadline <= timedelta(0)
        ):
            raise FlowDefinitionError(
                f"flow {self.name!r}: deadline must be a positive timedelta, got {self.deadline!r}"
            )
        if not isinstance(self.queue, str) or not _NAME.match(self.queue):
            raise FlowDefinitionError(
                f"flow {self.name!r}: invalid queue {self.queue!r}: use 1-200 letters, digits "
                "or _ . : -"
            )
        if self.limits is not None and not isinstance(self.limits, Limits):
            raise FlowDefinitionError(f"flow {self.name!r}: limits must be a Limits")
        if self.drift_policy not in ("fail", "park"):
            raise FlowDefinitionError(
                f"flow {self.name!r}: drift_policy must be 'fail' or 'park', "
                f"got {self.drift_policy!r}"
            )

    @property
    def key(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def limit_key(self, value: Any) -> str | None:
        """``runs.limit_key`` of a run with the validated input ``value``: None when the flow
        has no limits, "" for flow-wide limits (``INPUT_INVALID`` if the key function fails)."""
        return None if self.limits is None else self.limits.key_of(value)

    def validate_input(self, data: Any) -> In:
        """Validate (and coerce) an input; raise ``INPUT_INVALID`` with the pydantic details."""
        try:
            value: In = codec.load(data, self.input_type)
        except ValidationError as exc:
            raise InputInvalid(
                f"input for flow {self.key} is invalid: {codec.validation_message(exc)}",
                details={"errors": exc.errors(include_url=False, include_context=False)},
            ) from exc
        return value

    def encode_output(self, value: Any, *, limit: int = _NO_LIMIT) -> Any:
        """Validate the body's return value against the output model and encode it to JSON
        (``OUTPUT_INVALID``; ``PAYLOAD_INVALID``/``PAYLOAD_TOO_LARGE`` if it cannot be stored)."""
        try:
            checked = codec.load(value, self.output_type)
        except ValidationError as exc:
            raise OutputInvalid(
                f"flow {self.key} returned an invalid output: {codec.validation_message(exc)}"
            ) from exc
        return codec.encode(
            checked, self.output_type, what=f"output of flow {self.key}", limit=limit
        )

    def decode_output(self, data: Any) -> Out:
        """Decode stored output into the output model (``OUTPUT_INVALID`` if it no longer
        matches, e.g. a run of an older version read with a newer model)."""
        try:
            value: Out = codec.load(data, self.output_type)
        except ValidationError as exc:
            raise OutputInvalid(
                f"the stored output does not match {self.key}'s output model: "
                f"{codec.validation_message(exc)}"
            ) from exc
        return value

    def validate_signal(self, name: str, payload: Any) -> tuple[Any, Any]:
        """The model declared for signal ``name`` and ``payload`` validated against it
        (``SIGNAL_UNKNOWN``, ``SIGNAL_PAYLOAD_INVALID``): what a webhook checks before storing."""
        model = self.signal_model(name)
        return model, validate_signal_payload(name, model, payload)

    def signal_model(self, name: str) -> Any:
        """The model declared for signal ``name`` (``SIGNAL_UNKNOWN`` if none)."""
        model = self.signals.get(name)
        if model is None:
            known = ", ".join(sorted(self.signals)) or "none"
            raise SignalUnknown(f"flow {self.key} declares no signal {name!r} (declared: {known})")
        return model


def validate_signal_payload(name: str, model: Any, payload: Any) -> Any:
    """``payload`` of signal ``name`` validated against ``model`` (``SIGNAL_PAYLOAD_INVALID``)."""
    try:
        return codec.load(payload, model)
    except (ValidationError, RecursionError) as exc:
        message = (
            codec.validation_message(exc) if isinstance(exc, ValidationError) else "nested too deep"
        )
        raise SignalPayloadInvalid(
            f"payload for signal {name!r} is invalid: {message}",
            details={"where": f"signal {name!r}"},
        ) from exc


class Registry:
    """Flows registered in this process, by name and version."""

    def __init__(self) -> None:
        self._flows: dict[tuple[str, int], FlowDef[Any, Any]] = {}
        self._watchers: list[Callable[[], None]] = []

    def add(self, flow: FlowDef[Any, Any]) -> None:
        """Register a flow version; registering the same name and version twice is an error."""
        key = (flow.name, flow.version)
        if key in self._flows and self._flows[key] is not flow:
            raise FlowDefinitionError(f"flow {flow.key} is already registered")
        if key in self._flows:
            return
        self._flows[key] = flow
        for watcher in list(self._watchers):
            watcher()

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` after each new registration (a running worker starts serving the
        new flow version); returns the function that stops watching."""
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback)

    def get(self, name: str, version: int) -> FlowDef[Any, Any] | None:
        """The exact version, or None."""
        return self._flows.get((name, version))

    def latest(self, name: str) -> FlowDef[Any, Any] | None:
        """The newest registered version of ``name``, or None."""
        versions = [v for (n, v) in self._flows if n == name]
        return self._flows[(name, max(versions))] if versions else None

    def all(self) -> list[FlowDef[Any, Any]]:
        """Every registered flow version."""
        return list(self._flows.values())

    def serving(
        self, queues: Iterable[str] | None = None, flows: Iterable[str] | None = None
    ) -> list[FlowDef[Any, Any]]:
        """The flow versions a worker serving ``queues`` and ``flows`` (flow names; None: all)
        runs; ``CONFIG_INVALID`` for a flow name not registered here."""
        names = None if flows is None else set(flows)
        if names is not None and (unknown := names - {n for n, _ in self._flows}):
            raise ConfigInvalid(
                f"--flows names flows this engine does not register: {', '.join(sorted(unknown))}"
            )
        wanted = None if queues is None else set(queues)
        return [
            f
            for f in self._flows.values()
            if (wanted is None or f.queue in wanted) and (names is None or f.name in names)
        ]

    def gate(self, queues: Iterable[str] | None = None, flows: Iterable[str] | None = None) -> Gate:
        """The :class:`~iterflow.core.limits.Gate` of a worker serving ``queues`` and ``flows``
        (see :meth:`serving`): it claims only those flow versions."""
        served = self.serving(queues, flows)
        return Gate(
            served=frozenset(f.key for f in served),
            limits={f.key: f.limits for f in served if f.limits is not None},
        )
