"""Log files and what never goes into them.

Every log the app writes (its own ``gemma-desktop.log``, vLLM's ``engine.log``
from the app's process and from vLLM's engine processes, the start-up log)
passes through one :class:`Redactor`: the secrets the app knows (the HF token,
a remote server's API key, the local API token) and anything shaped like a
Hugging Face token become ``hf_***``.

The app's process adds secrets as it learns them (:meth:`Redactor.add_secret`
on :data:`REDACTOR`). vLLM's engine processes are separate interpreters that
import this module through the logging configuration: there the redactor
starts from the secrets in the environment the process inherited
(``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``VLLM_API_KEY``) and the shape
rules, which also catch the local API token by its prefix.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import threading
import traceback
from pathlib import Path

#: Anything shaped like a Hugging Face token, or the local API's bearer token.
_SHAPES = (
    re.compile(r"hf_[A-Za-z0-9]{8,}"),
    re.compile(r"gd-local-[A-Za-z0-9_\-]{8,}"),
)
_BEARER = re.compile(r"(Bearer\s+)([^\s\"',]{8,})")
#: Environment variables whose values are secrets wherever they appear.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY")
MASK = "hf_***"
#: Shortest value treated as a secret; shorter strings would mask ordinary words.
MIN_SECRET_LEN = 8

LOG_MAX_BYTES = 2 * 1024 * 1024
LOG_BACKUPS = 3
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def redact(text: str, *secrets: str | None) -> str:
    """Replace each secret, and anything shaped like a token, with ``hf_***``."""
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_LEN:
            text = text.replace(secret, MASK)
    for shape in _SHAPES:
        text = shape.sub(MASK, text)
    return _BEARER.sub(lambda m: m.group(1) + MASK, text)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before a network round trip: ``hf_`` and at least 8 more characters."""
    return bool(_SHAPES[0].fullmatch(value.strip()))


class Redactor:
    """The secrets of this process, and the one :meth:`redact` every log goes through."""

    def __init__(self, *, from_env: bool = True) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        if from_env:
            for name in SECRET_ENV:
                self.add_secret(os.environ.get(name))

    def add_secret(self, secret: str | None) -> None:
        if secret and len(secret.strip()) >= MIN_SECRET_LEN:
            with self._lock:
                self._secrets.add(secret.strip())

    @property
    def secrets(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._secrets)

    def redact(self, text: str) -> str:
        # Longest first, so a secret that contains another is masked whole.
        return redact(text, *sorted(self.secrets, key=len, reverse=True))


#: The process-wide redactor: the app adds every secret it handles to it.
REDACTOR = Redactor()


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message, traceback and stack.

    Without an argument it uses :data:`REDACTOR`, which is how vLLM's logging
    configuration (``{"()": "gemma_desktop.core.logs.RedactingFilter"}``)
    shares the app's secrets.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def add_secret(self, secret: str | None) -> None:
        self.redactor.add_secret(secret)

    def redact(self, text: str) -> str:
        return self.redactor.redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = self.redact(
                "".join(traceback.format_exception(*record.exc_info)).rstrip()
            )
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def rotating_handler(path: Path, redactor: Redactor | None = None) -> logging.Handler:
    """A size-rotated log file (2 MB, 3 old copies) that redacts every record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactingFilter(redactor))
    return handler


def rotate_if_large(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """Roll ``path`` over (``path.1`` … ``path.N``) when it has grown past ``max_bytes``.

    For a log that several processes append to (vLLM's ``engine.log``), where
    rotating while another process writes would split a run's lines across
    files: it is rolled over before the engine starts, and appended to during
    a run. Returns whether it rolled over.
    """
    try:
        if path.stat().st_size < max_bytes:
            return False
    except OSError:
        return False
    for index in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True
