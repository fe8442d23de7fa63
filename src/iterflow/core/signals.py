"""Typed signal descriptors: one object names a signal and its payload model.

``approve = Signal("approve", Approval)`` is declared on a flow (``signals=[approve]``, or the
builder's ``.signal(approve)``), awaited in its body (``await ctx.signal(approve)`` is an
``Approval`` to a type checker and at run time) and sent (``engine.signal(run_id, approve,
Approval(...))``, the payload checked against ``Approval`` by the type checker). The string form
(``ctx.signal("approve", Approval)``, ``signals={"approve": Approval}``) keeps working; both
forms declare the same thing.

Also which model validates a payload sent to a run (:func:`payload_model`): the one its flow
version declares; when this process does not register that version (a web tier deployed before
or after the workers), the descriptor's, else the newest registered version's, else none, and the
worker validates the payload when the run consumes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from iterflow.core import codec
from iterflow.core.definition import _NAME, Registry
from iterflow.core.errors import FlowDefinitionError, SignalPayloadInvalid

__all__ = ["Signal", "SignalsSpec", "declared", "model_name", "payload_model", "resolve"]

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class Signal(Generic[M]):
    """A signal's name and payload model, typed: ``approve = Signal("approve", Approval)``.

    Declare it on a flow (``signals=[approve]``), wait for it (``await ctx.signal(approve)``
    returns an ``Approval``) and send it (``await engine.signal(run_id, approve, Approval(...))``:
    a payload of another type is a type error). The name follows the rules of flow names
    (1-200 letters, digits or ``_ . : -``); the model is anything pydantic validates (a model, a
    dataclass, ``int``...).
    """

    name: str
    model: type[M]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise FlowDefinitionError(
                f"invalid signal name {codec.shown(self.name)}: use 1-200 letters, digits or "
                "_ . : -"
            )
        try:
            codec.adapter(self.model)
        except Exception as exc:
            raise FlowDefinitionError(
                f"signal {self.name!r}: {codec.shown(self.model)} is not a payload model pydantic "
                "can validate; use a pydantic model, a dataclass or a JSON type"
            ) from exc

    def __repr__(self) -> str:
        return f"Signal({self.name!r}, {model_name(self.model)})"


#: What a flow's ``signals=`` takes: ``{"approve": Approval}`` or ``[approve, ...]``.
SignalsSpec: TypeAlias = Mapping[str, type[Any]] | Iterable[Signal[Any]]


def model_name(model: Any) -> str:
    """A model's name for messages (``Approval``, ``list[int]``)."""
    return getattr(model, "__name__", None) or repr(model)


def resolve(name: str | Signal[Any], model: Any = None) -> tuple[str, Any]:
    """``(name, model)`` of ``ctx.signal(name, model)`` or ``ctx.signal(descriptor)``
    (``FLOW_DEFINITION_INVALID`` for a descriptor given a model too, or a name without one)."""
    if isinstance(name, Signal):
        if model is not None:
            raise FlowDefinitionError(
                f"{name!r} carries its payload model; pass the descriptor alone"
            )
        return name.name, name.model
    if model is None:
        raise FlowDefinitionError(
            f"signal {codec.shown(name)} needs its payload model: ctx.signal(name, Model), or a "
            "Signal(name, Model) descriptor"
        )
    return name, model


def declared(flow_name: str, spec: SignalsSpec | None) -> dict[str, Any]:
    """A flow's ``signals=`` as ``{name: model}``: a mapping as given, or descriptors (one
    model per name, ``FLOW_DEFINITION_INVALID`` otherwise)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return dict(spec)
    out: dict[str, Any] = {}
    for sig in spec:
        if not isinstance(sig, Signal):
            raise FlowDefinitionError(
                f"flow {flow_name!r}: signals= takes Signal descriptors or a {{name: model}} "
                f"mapping, got {codec.shown(sig)}"
            )
        known = out.setdefault(sig.name, sig.model)
        if known is not sig.model:
            raise FlowDefinitionError(
                f"flow {flow_name!r}: signal {sig.name!r} is declared with {model_name(known)} "
                f"and with {model_name(sig.model)}; one signal name has one payload model"
            )
    return out


def payload_model(
    registry: Registry, flow: str, version: int, name: str, model: Any = None
) -> Any | None:
    """The model a payload of signal ``name`` sent to a run of ``flow@version`` is validated
    with before it is stored, or None to store it unvalidated (checked as JSON only; the worker
    validates it against the declared model when the run consumes it).

    * the run's version is registered here: the model it declares (``SIGNAL_UNKNOWN`` if none;
      ``SIGNAL_PAYLOAD_INVALID`` if a descriptor's ``model`` is another one);
    * it is not (a web tier that registers other versions, or none): the descriptor's model,
      else the model the newest registered version of ``flow`` declares for ``name``, else None.
      Such a model only vets the payload: it is stored as sent, since another version's model
      would drop the fields only the run's model reads.
    """
    exact = registry.get(flow, version)
    if exact is not None:
        declared_model = exact.signal_model(name)
        if model is not None and declared_model is not model:
            raise SignalPayloadInvalid(
                f"flow {exact.key} declares signal {name!r} with {model_name(declared_model)}, "
                f"not {model_name(model)}; send the Signal the flow declares",
                details={"where": f"signal {name!r}"},
            )
        return declared_model
    if model is not None:
        return model
    newest = registry.latest(flow)
    return None if newest is None else newest.signals.get(name)
