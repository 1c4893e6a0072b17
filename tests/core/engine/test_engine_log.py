"""engine.log rotates like the app log and goes through the same redaction.

A fresh interpreter configures vLLM's logging the way the app does before
vLLM is imported, lets vLLM apply it as its engine constructor does (from the
configuration file the app wrote), then logs through vLLM's ``init_logger``:
a secret in a line is masked, a traceback's secret too, and a log past the
size limit is rolled over before the next engine start, keeping three old
copies.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from gemma_desktop.core.logs import LOG_BACKUPS, LOG_MAX_BYTES

REMOTE_KEY = "sk-remote-Zq81Lw0Xc4"
ENV_TOKEN = "hf_EnvTokenAbcdefghijklmnop12"

_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from gemma_desktop.core.engine import vllm_local
    from gemma_desktop.core.logs import REDACTOR

    folder = Path(sys.argv[1])
    vllm_local._configure_vllm_logging("CRITICAL", folder)
    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging_if_needed, init_logger

    configure_logging_if_needed(LoggingConfig())  # as the engine's constructor does

    REDACTOR.add_secret(sys.argv[2])
    log = init_logger("vllm.engine_log_test")
    log.info("connecting with %s and %s", sys.argv[2], sys.argv[3])
    try:
        raise RuntimeError("bad key " + sys.argv[2])
    except RuntimeError:
        log.exception("request failed")
    rotated_early = vllm_local.rotate_engine_log()
    log.info("filler %s", "x" * int(sys.argv[4]))
    rotated = vllm_local.rotate_engine_log()
    log.info("after the roll-over")
    print(json.dumps({"early": rotated_early, "rotated": rotated,
                      "path": str(vllm_local.engine_log_path())}))
    """
)


def _run(folder: Path, filler: int) -> dict[str, object]:
    env = {"PATH": "/usr/bin:/bin", "HF_TOKEN": ENV_TOKEN, "HOME": str(folder)}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(folder), REMOTE_KEY, ENV_TOKEN, str(filler)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def test_engine_log_is_redacted_and_rotated(tmp_path: Path) -> None:
    # A log left large by earlier runs is rolled over before vLLM opens it.
    log = tmp_path / "engine.log"
    log.write_text("old run\n" * (LOG_MAX_BYTES // 8 + 1), encoding="utf-8")

    out = _run(tmp_path, filler=LOG_MAX_BYTES)
    assert out["path"] == str(log)
    assert out["early"] is False, "a small log was rolled over"
    assert out["rotated"] is True

    first = (tmp_path / "engine.log.2").read_text(encoding="utf-8")
    assert first.startswith("old run")  # the earlier run's log, kept
    second = (tmp_path / "engine.log.1").read_text(encoding="utf-8")
    assert "connecting with" in second and "request failed" in second
    assert "bad key" in second and "RuntimeError" in second  # the traceback was kept
    assert "after the roll-over" in log.read_text(encoding="utf-8")
    for path in tmp_path.glob("engine.log*"):
        text = path.read_text(encoding="utf-8")
        assert REMOTE_KEY not in text and ENV_TOKEN not in text, path.name


_ROUNDS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gemma_desktop.core.engine import vllm_local

    vllm_local._configure_vllm_logging("CRITICAL", Path(sys.argv[1]))
    from vllm.config.logging import LoggingConfig
    from vllm.logger import configure_logging_if_needed, init_logger

    configure_logging_if_needed(LoggingConfig())
    log = init_logger("vllm.engine_log_test")
    for number in range(int(sys.argv[2])):  # one engine start after another
        log.info("run %d %s", number, "x" * int(sys.argv[3]))
        assert vllm_local.rotate_engine_log(), number
    log.info("run %s", sys.argv[2])
    """
)


def test_engine_log_keeps_at_most_three_old_copies(tmp_path: Path) -> None:
    """Five engine starts, each after a run that filled the log: three old copies stay,
    newest first, and the oldest runs' logs are gone."""
    runs = LOG_BACKUPS + 2
    result = subprocess.run(
        [sys.executable, "-c", _ROUNDS, str(tmp_path), str(runs), str(LOG_MAX_BYTES)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.glob("engine.log*"))
    assert names == ["engine.log"] + [f"engine.log.{i}" for i in range(1, LOG_BACKUPS + 1)]

    def runs_in(name: str) -> list[int]:
        text = (tmp_path / name).read_text(encoding="utf-8")
        return [int(n) for n in re.findall(r" run (\d+)", text)]

    assert runs_in("engine.log") == [runs]
    assert [runs_in(f"engine.log.{age}") for age in range(1, LOG_BACKUPS + 1)] == [
        [runs - age] for age in range(1, LOG_BACKUPS + 1)
    ]
