"""Work-arounds for defects of the installed Qt binding. Import before using Qt.

PySide6 6.12.0 on Python 3.11 drops one reference to ``None`` every time a
Qt method that returns ``void`` is called from Python (``QTimer.start``,
``QTextCursor.setPosition``, ``QWidget.setVisible``...). ``None`` starts with a
few thousand references, so after some thousands of such calls the
interpreter aborts with ``Fatal Python error: none_dealloc`` -- a streaming
chat reaches that in seconds. Python 3.12+ makes ``None`` immortal (PEP 683)
and is not affected. On older Pythons :func:`keep_none_alive` adds a very
large number of references to ``None`` once, which makes it immortal in
practice (a 2**40 head start lasts for centuries of calls).
"""

from __future__ import annotations

import ctypes
import sys

#: References added to ``None`` (see the module docstring).
NONE_HEAD_START = 1 << 40
_done = False


def keep_none_alive() -> None:
    """Make ``None`` effectively immortal on Python < 3.12 (idempotent)."""
    global _done
    if _done or sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        _done = True
        return
    refcount = ctypes.c_ssize_t.from_address(id(None))
    if refcount.value < NONE_HEAD_START // 2:
        refcount.value += NONE_HEAD_START
    _done = True


keep_none_alive()
