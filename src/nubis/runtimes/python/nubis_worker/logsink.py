"""Routes `context.logger` records into `log` frames.

Records below the level asked for (info by default, debug when the request or the function asks)
are dropped here, in the worker, by the logging level check, so they cost no frame and no syscall.
"""

from __future__ import annotations

import logging

import nuclio_sdk
from nubis_worker.framing import KIND, LEVEL, LOG, LOG_VARS, MESSAGE, SEQ

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "error",
}


class FrameLogHandler(logging.Handler):
    """Appends each record as a `log` frame to the worker's outgoing buffer."""

    def __init__(self, emit_frame, state):  # type: ignore[no-untyped-def]
        super().__init__(logging.DEBUG)
        self._emit_frame = emit_frame
        self._state = state

    def emit(self, record):  # type: ignore[no-untyped-def]
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad printf-style format must not kill the event
            message = "%s (log formatting failed: %s)" % (record.msg, exc)
        self._emit_frame(
            {
                KIND: LOG,
                SEQ: self._state.current,
                LEVEL: _NAMES.get(record.levelno, "debug"),
                MESSAGE: message,
                LOG_VARS: getattr(record, "with", None) or {},
                "time": record.created,
            }
        )


class FrameLogger(nuclio_sdk.Logger):
    """nuclio_sdk.Logger that checks the level before building a record.

    The SDK's logger calls `logging.Logger._log` directly, which skips the level check, so every
    debug call would build and format a record only for it to be thrown away.
    """

    def _update_bound_vars_and_log(self, level, message, *args, **kw_args):  # type: ignore[no-untyped-def]
        if self._logger.isEnabledFor(level):
            super()._update_bound_vars_and_log(level, message, *args, **kw_args)


def make_logger(name, emit_frame, state):  # type: ignore[no-untyped-def]
    """A nuclio_sdk.Logger whose records become frames; propagation off so nothing prints twice."""
    logger = FrameLogger(logging.INFO, name=name)
    inner = logger._logger
    inner.propagate = False
    for handler in list(inner.handlers):
        inner.removeHandler(handler)
    inner.addHandler(FrameLogHandler(emit_frame, state))
    return logger
