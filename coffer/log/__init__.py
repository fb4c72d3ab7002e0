"""The command log: the durable, totally ordered sequence of entries the state machine applies.

``base`` holds the interface and its errors; ``memory`` and ``wal`` are the backends.
"""

from coffer.log.base import (
    CommandLog,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogRecord,
    LogTruncatedError,
    LogWriteError,
    payload_bytes_max,
)
from coffer.log.memory import MemoryLog
from coffer.log.wal import LocalWal

__all__ = [
    "CommandLog",
    "LocalWal",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogRecord",
    "LogTruncatedError",
    "LogWriteError",
    "MemoryLog",
    "payload_bytes_max",
]
