"""One error tree with stable codes.

Every failure a user can observe is a :class:`FlowError` (or a subclass) whose ``code`` never
changes between releases. Messages say what to do; the original exception, when there is one, is
kept as ``__cause__`` and persisted (type and message) with the run.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, ClassVar

import pydantic_core

if TYPE_CHECKING:
    from iterflow.core.models import SuspendPlan

_BY_CODE: dict[str, type[FlowError]] = {}
"""Every error class by its code: filled by ``FlowError.__init_subclass__``."""

__all__ = [
    "Aborted",
    "ConfigInvalid",
    "CtxNested",
    "CtxNotAwaited",
    "DataRejected",
    "DatabaseUnavailable",
    "Drifted",
    "DurationInvalid",
    "EventInputInvalid",
    "FlowDefinitionError",
    "FlowError",
    "FlowFailed",
    "FlowUnknown",
    "ForkStepUnknown",
    "Halted",
    "HistoryInvalid",
    "IdempotencyConflict",
    "InputInvalid",
    "Interrupt",
    "InvokeDepthExceeded",
    "InvokeFanoutExceeded",
    "LeaseLost",
    "MapItemsInvalid",
    "NonRetryable",
    "OutputInvalid",
    "PayloadInvalid",
    "PayloadTooLarge",
    "ReplayNonDeterministic",
    "ResultTimeout",
    "RunAttemptsExhausted",
    "RunCanceled",
    "RunDeadlineExceeded",
    "RunNotFound",
    "ScheduleConflict",
    "ScheduleInvalid",
    "ScheduleNotFound",
    "SchemaConflict",
    "SchemaMissing",
    "SignalLimitExceeded",
    "SignalPayloadInvalid",
    "SignalTimeout",
    "SignalUnknown",
    "StepFailed",
    "StepResultUntyped",
    "StepTimeout",
    "Suspended",
    "json_safe",
    "registered_codes",
    "safe_text",
]


class FlowError(Exception):
    """Base of every iterflow error. ``code`` is stable; ``message`` is for humans.

    ``FlowError("card declined", code="PAYMENT_DECLINED")`` lets user code raise its own coded
    errors from steps or bodies; the code is preserved through storage and ``handle.result``.
    """

    code: ClassVar[str] = "FLOW_ERROR"
    #: The (truncated) traceback of the user code that raised it, stored as ``traceback`` in
    #: the error's JSON: set by the runtime for errors raised by steps and flow bodies.
    traceback: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("code")
        if code is None:
            return
        other = _BY_CODE.get(code)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"error code {code!r} is used by {other.__qualname__} already")
        _BY_CODE[code] = cls

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self._code = code
        self.details: dict[str, Any] = dict(details or {})

    @property
    def error_code(self) -> str:
        """The stable code of this error instance (a custom one if given, else the class code)."""
        return self._code or type(self).code

    def __str__(self) -> str:
        return f"[{self.error_code}] {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``runs.error`` / ``steps.error``.

        Always storable: ``details`` are made JSON-safe (``datetime`` → ISO text, unknown types
        → their ``repr``, NaN → ``"NaN"``), text loses NUL characters and lone surrogates, and
        over-long text is truncated with a marker. An error is a diagnostic record, so it is
        repaired rather than refused: refusing it would lose the failure it describes.
        """
        data: dict[str, Any] = {
            "code": safe_text(self.error_code, MAX_CODE_CHARS),
            "message": safe_text(self.message, MAX_MESSAGE_CHARS),
        }
        if self.details:
            data["details"] = json_safe(self.details)
        cause = self.__cause__
        if cause is not None:
            data["cause"] = {
                "type": safe_text(type(cause).__qualname__, MAX_CODE_CHARS),
                "message": safe_text(_text_of(cause), MAX_MESSAGE_CHARS),
            }
        if self.traceback:
            data["traceback"] = safe_text(self.traceback, MAX_TRACEBACK_CHARS)
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> FlowError:
        """Rebuild the most specific error class for a stored error (code preserved)."""
        code = str(data.get("code", FlowError.code))
        cls = _BY_CODE.get(code, FlowError)
        err = cls.__new__(cls)
        FlowError.__init__(
            err,
            str(data.get("message", "")),
            code=None if cls is not FlowError else code,
            details=data.get("details"),
        )
        if cls is FlowError:
            err._code = code
        cause = data.get("cause")
        if isinstance(cause, dict):
            err.details.setdefault("cause", cause)
        tb = data.get("traceback")
        if isinstance(tb, str):
            err.traceback = tb
        return err


class NonRetryable(FlowError):
    """Raise from a step to fail it at once, without using its remaining retries."""

    code = "STEP_NON_RETRYABLE"


class InputInvalid(FlowError):
    """The input does not match the flow's input model; nothing was written."""

    code = "INPUT_INVALID"


class OutputInvalid(FlowError):
    """The body returned a value that does not match the flow's output model."""

    code = "OUTPUT_INVALID"


class PayloadTooLarge(FlowError):
    """An input, output, step result or signal payload exceeds ``max_payload_bytes``."""

    code = "PAYLOAD_TOO_LARGE"


class FlowUnknown(FlowError):
    """No flow (or no such version of it) is registered in this process."""

    code = "FLOW_UNKNOWN"


class FlowDefinitionError(FlowError):
    """A flow definition is invalid (raised at definition or registration time)."""

    code = "FLOW_DEFINITION_INVALID"


class StepFailed(FlowError):
    """A step failed after its last allowed attempt; raised into the body."""

    code = "STEP_FAILED"


class StepTimeout(FlowError):
    """A step attempt ran longer than its ``timeout``."""

    code = "STEP_TIMEOUT"


class SignalTimeout(FlowError):
    """``ctx.signal(..., timeout=)`` expired before a matching signal arrived."""

    code = "SIGNAL_TIMEOUT"


class SignalPayloadInvalid(FlowError):
    """A signal payload does not match the model declared for that signal name."""

    code = "SIGNAL_PAYLOAD_INVALID"


class SignalUnknown(FlowError):
    """The flow declares no signal with that name."""

    code = "SIGNAL_UNKNOWN"


class ReplayNonDeterministic(FlowError):
    """Replay found a call that differs from the recorded history at the same position."""

    code = "REPLAY_NON_DETERMINISTIC"


class RunCanceled(FlowError):
    """The run was canceled."""

    code = "RUN_CANCELED"


class RunAttemptsExhausted(FlowError):
    """The run was claimed too many times without making progress (a poison run)."""

    code = "RUN_ATTEMPTS_EXHAUSTED"


class RunNotFound(FlowError):
    """No run with that id exists."""

    code = "RUN_NOT_FOUND"


class RunDeadlineExceeded(FlowError):
    """The run was still live at its deadline (``start(..., deadline=)`` or the flow's
    ``deadline=``): it failed, and its live children that are not detached were canceled.
    ``engine.retry(run_id)`` replays it without a deadline."""

    code = "RUN_DEADLINE_EXCEEDED"


class IdempotencyConflict(FlowError):
    """A start reused an idempotency key with a different input; nothing was written. Use a new
    key for a new request, or the same input to get the existing run back."""

    code = "IDEMPOTENCY_CONFLICT"


class ForkStepUnknown(FlowError):
    """``engine.fork(run_id, from_step=KEY)`` names a cursor key the run never recorded; nothing
    was written. The message lists the run's recorded keys."""

    code = "FORK_STEP_UNKNOWN"


class HistoryInvalid(FlowError):
    """A run export (``flowctl export``, read by ``iterflow.testing.replay``) is not a valid
    document of a format this version reads, or holds a value PostgreSQL could not have stored.
    Nothing was replayed."""

    code = "HISTORY_INVALID"


class ResultTimeout(FlowError):
    """``handle.result(timeout=)`` expired before the run finished. The run is unaffected."""

    code = "RESULT_TIMEOUT"


class FlowFailed(FlowError):
    """The body raised an exception that is not a ``FlowError``; its type and text are kept."""

    code = "FLOW_FAILED"


class InvokeDepthExceeded(FlowError):
    """A child flow would exceed the maximum nesting depth."""

    code = "INVOKE_DEPTH_EXCEEDED"


class InvokeFanoutExceeded(FlowError):
    """A run would start more children than allowed."""

    code = "INVOKE_FANOUT_EXCEEDED"


class MapItemsInvalid(FlowError):
    """A builder ``.map``'s ``over`` returned no ordered collection of items (not iterable, a
    ``str``, ``bytes``, mapping or set, whose order is not stable); no item was started."""

    code = "MAP_ITEMS_INVALID"


class DatabaseUnavailable(FlowError):
    """PostgreSQL could not be reached or refused the operation; nothing was changed."""

    code = "DATABASE_UNAVAILABLE"


class SchemaMissing(FlowError):
    """The iterflow tables are not installed; run ``flowctl migrate`` or ``engine.migrate()``."""

    code = "SCHEMA_MISSING"


class ConfigInvalid(FlowError):
    """The engine configuration is invalid."""

    code = "CONFIG_INVALID"


class DurationInvalid(FlowError):
    """A duration or due time could not be understood (``"3d"``, ``timedelta``, seconds, an
    aware ``datetime``); nothing was written."""

    code = "DURATION_INVALID"


class PayloadInvalid(FlowError):
    """A value cannot be stored as JSON: NUL characters, lone surrogates, NaN/Infinity, a type
    the codec cannot encode, nesting too deep or a number out of range. Raised before anything is
    written; from a step, the step fails at once (its body ran once, it is not retried)."""

    code = "PAYLOAD_INVALID"


class CtxNotAwaited(FlowError):
    """A ``ctx`` call was made but never awaited (``ctx.step(...)`` without ``await``): it took
    its place in the run's history and would have been skipped silently. Raised into the body at
    its next ``ctx`` call, or when the body returns; the run fails (a programming error)."""

    code = "CTX_NOT_AWAITED"


class CtxNested(FlowError):
    """A ``ctx`` call was made from inside a step function. ``ctx`` calls belong in the flow
    body: a step's body runs once and is not replayed, so a call made there would take a history
    position on the first run only. Refused at the call; the step fails without retries."""

    code = "CTX_NESTED"


class StepResultUntyped(FlowError):
    """A step function without a return annotation returned a value that JSON cannot give back
    as it is (a pydantic model, ``Decimal``, ``UUID``, ``datetime``, a dataclass, an enum,
    ``bytes``, a set, a dict with non-string keys): it would come back as a dict, a string or a
    list. Annotate the step function's return type. The step fails without retries."""

    code = "STEP_RESULT_UNTYPED"


class DataRejected(FlowError):
    """PostgreSQL refused a value or a constraint (SQLSTATE class 22 or 23). The statement wrote
    nothing; retrying the same data fails the same way. Not an outage."""

    code = "DATA_REJECTED"


class ScheduleInvalid(FlowError):
    """A cron expression, time zone, window, catch-up, jitter or overlap policy is invalid;
    nothing was written."""

    code = "SCHEDULE_INVALID"


class ScheduleConflict(FlowError):
    """A schedule with this id exists with another definition (or from another source); nothing
    was written. Delete it first, or pick another id."""

    code = "SCHEDULE_CONFLICT"


class ScheduleNotFound(FlowError):
    """No schedule has this id."""

    code = "SCHEDULE_NOT_FOUND"


class SignalLimitExceeded(FlowError):
    """The run already holds ``Settings.max_signals_per_run`` signals; this one was not stored."""

    code = "SIGNAL_LIMIT_EXCEEDED"


class EventInputInvalid(InputInvalid):
    """``engine.publish``: a subscribed flow's input model rejects the event's payload. The
    message and ``details["flow"]`` name that flow; no run of any subscriber was started."""

    code = "EVENT_INPUT_INVALID"


def registered_codes() -> dict[str, type[FlowError]]:
    """Every error code with its class (the codes ``FlowError.from_dict`` rebuilds)."""
    return dict(_BY_CODE)


#: Caps on the text of stored errors (characters).
MAX_CODE_CHARS = 200
MAX_MESSAGE_CHARS = 8_000
MAX_TRACEBACK_CHARS = 4_000
_MAX_DETAIL_DEPTH = 32
_MAX_DETAIL_ITEMS = 1_000
_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _text_of(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the error
        return f"<{type(value).__qualname__} with a failing __str__>"


def safe_text(value: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``value`` as text PostgreSQL can store: NUL and lone surrogates become U+FFFD, and text
    over ``limit`` characters is cut with a marker."""
    text = value if isinstance(value, str) else _text_of(value)
    if _UNSAFE_TEXT.search(text):
        text = _UNSAFE_TEXT.sub("\ufffd", text)
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters]"
    return text


def json_safe(value: Any, _depth: int = 0) -> Any:
    """JSON data for anything, never raising: for error details, not for payloads (payloads are
    refused instead, see :func:`iterflow.core.codec.encode`)."""
    if _depth == 0:
        try:
            value = pydantic_core.to_jsonable_python(
                value, fallback=_text_of, inf_nan_mode="strings", serialize_unknown=True
            )
        except Exception:
            return safe_text(repr(value))
    if value is None or isinstance(value, bool | int):
        return value if not isinstance(value, int) or abs(value) < 10**18 else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return safe_text(value)
    if _depth >= _MAX_DETAIL_DEPTH:
        return "… [nested too deep]"
    if isinstance(value, dict):
        items = list(value.items())[:_MAX_DETAIL_ITEMS]
        return {safe_text(k, MAX_CODE_CHARS): json_safe(v, _depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [json_safe(v, _depth + 1) for v in value[:_MAX_DETAIL_ITEMS]]
    return safe_text(repr(value))


class SchemaConflict(FlowError):
    """The database holds objects iterflow's migrations would create but did not record (e.g.
    tables made from ``flowctl generate-schema`` by the application's own migrations), or those
    tables differ from this iterflow version's. Nothing was changed; the message names the
    command that resolves it (``flowctl migrate --stamp``)."""

    code = "SCHEMA_CONFLICT"


# --- control flow -------------------------------------------------------------------------------
# Not errors: they end an attempt. BaseExceptions, so ``except Exception`` in user code cannot
# swallow them (a bare ``except:`` that does is caught at the next ctx call).


class Interrupt(BaseException):
    """Ends the attempt. Derives from BaseException so ``except Exception`` cannot swallow it."""


class Suspended(Interrupt):
    """The run waits (sleep, signal, retry backoff); the worker writes ``plan``."""

    def __init__(self, plan: SuspendPlan) -> None:
        super().__init__(plan.reason)
        self.plan = plan


class Drifted(Interrupt):
    """The body no longer matches the recorded history."""

    def __init__(self, error: FlowError) -> None:
        super().__init__(str(error))
        self.error = error


class Halted(Interrupt):
    """A ``cancel(compensate=True)`` is pending: the replay reached a call with no final memo
    (the point where the run stopped), so the body stops there and the run's compensations
    run."""


class Aborted(Interrupt):
    """Storage failed mid-attempt (e.g. PostgreSQL restarting). The attempt ends without failing
    the run; it is retried shortly, or recovered by lease expiry if even that write fails."""

    def __init__(self, error: FlowError) -> None:
        super().__init__(str(error))
        self.error = error


class LeaseLost(BaseException):
    """This attempt no longer owns the run (lease expired and another worker claimed it, or the
    run was canceled). The attempt must stop without writing anything else."""
