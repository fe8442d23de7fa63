"""One error tree with stable codes.

Every failure a user can observe is a :class:`FlowError` (or a subclass) whose ``code`` never
changes between releases. Messages say what to do; the original exception, when there is one, is
kept as ``__cause__`` and persisted (type and message) with the run.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConfigInvalid",
    "DatabaseUnavailable",
    "FlowDefinitionError",
    "FlowError",
    "FlowFailed",
    "FlowUnknown",
    "InputInvalid",
    "InvokeDepthExceeded",
    "InvokeFanoutExceeded",
    "NonRetryable",
    "OutputInvalid",
    "PayloadTooLarge",
    "ReplayNonDeterministic",
    "ResultTimeout",
    "RunAttemptsExhausted",
    "RunCanceled",
    "RunNotFound",
    "SchemaMissing",
    "SignalPayloadInvalid",
    "SignalTimeout",
    "SignalUnknown",
    "StepFailed",
    "StepTimeout",
]


class FlowError(Exception):
    """Base of every iterflow error. ``code`` is stable; ``message`` is for humans.

    ``FlowError("card declined", code="PAYMENT_DECLINED")`` lets user code raise its own coded
    errors from steps or bodies; the code is preserved through storage and ``handle.result``.
    """

    code: ClassVar[str] = "FLOW_ERROR"

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
        """The JSON form stored in ``runs.error`` / ``steps.error``."""
        data: dict[str, Any] = {"code": self.error_code, "message": self.message}
        if self.details:
            data["details"] = self.details
        cause = self.__cause__
        if cause is not None:
            data["cause"] = {"type": type(cause).__qualname__, "message": str(cause)}
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


class DatabaseUnavailable(FlowError):
    """PostgreSQL could not be reached or refused the operation; nothing was changed."""

    code = "DATABASE_UNAVAILABLE"


class SchemaMissing(FlowError):
    """The iterflow tables are not installed; run ``flowctl migrate`` or ``engine.migrate()``."""

    code = "SCHEMA_MISSING"


class ConfigInvalid(FlowError):
    """The engine configuration is invalid."""

    code = "CONFIG_INVALID"


_BY_CODE: dict[str, type[FlowError]] = {
    cls.code: cls
    for cls in (
        NonRetryable,
        InputInvalid,
        OutputInvalid,
        PayloadTooLarge,
        FlowUnknown,
        FlowDefinitionError,
        StepFailed,
        StepTimeout,
        SignalTimeout,
        SignalPayloadInvalid,
        SignalUnknown,
        ReplayNonDeterministic,
        RunCanceled,
        RunAttemptsExhausted,
        RunNotFound,
        ResultTimeout,
        FlowFailed,
        InvokeDepthExceeded,
        InvokeFanoutExceeded,
        DatabaseUnavailable,
        SchemaMissing,
        ConfigInvalid,
    )
}
