"""Attachments in the history: checked with the engines' decoders, stored content-addressed,
referenced from SQLite, removed with the last message that uses them, exported beside the
document, and never left dangling by a kill -9."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw

from gemma_desktop.core import media
from gemma_desktop.core.chat.attachments import (
    STALE_ORPHAN_S,
    AttachmentError,
    AttachmentStore,
    PreparedFile,
    prepare_data,
    prepare_file,
    prepare_recording,
)
from gemma_desktop.core.chat.history import SCHEMA_VERSION, HistoryError, HistoryStore

REPO = Path(__file__).resolve().parents[3]


def png(path: Path, size: tuple[int, int] = (320, 240), color: str = "teal") -> Path:
    image = Image.new("RGB", size, color)
    ImageDraw.Draw(image).ellipse((10, 10, size[0] - 10, size[1] - 10), fill="orange")
    image.save(path, "PNG")
    return path


def tone(path: Path, seconds: float, rate: int = 22_050, fmt: str = "WAV") -> Path:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(
        str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format=fmt
    )
    return path


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    s = HistoryStore(tmp_path / "history.sqlite3")
    yield s
    s.close()


# --- checking what is attached -----------------------------------------------------------


def test_a_picture_is_kept_as_it_is(tmp_path: Path) -> None:
    source = png(tmp_path / "photo.png")
    prepared = prepare_file(source)
    assert (prepared.kind, prepared.mime, prepared.width, prepared.height) == (
        "image",
        "image/png",
        320,
        240,
    )
    assert prepared.data == source.read_bytes() and prepared.note == ""


def test_a_100_megapixel_photo_is_downscaled_not_refused(tmp_path: Path) -> None:
    big = Image.new("RGB", (10_000, 10_000), (200, 220, 240))
    ImageDraw.Draw(big).rectangle((1000, 1000, 9000, 9000), fill=(20, 80, 160))
    source = tmp_path / "camera.jpg"
    big.save(source, "JPEG", quality=80)
    prepared = prepare_file(source)
    assert prepared.kind == "image" and prepared.mime == "image/jpeg"
    assert max(prepared.width or 0, prepared.height or 0) == media.MAX_IMAGE_SIDE
    assert "10000×10000" in prepared.note
    stored = Image.open(io.BytesIO(prepared.data))
    assert stored.size == (prepared.width, prepared.height)


def test_pasted_bytes_and_bad_files(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "PNG")
    pasted = prepare_data(buffer.getvalue(), "Pasted image.png", tmp_path / "scratch")
    assert (pasted.kind, pasted.width, pasted.height) == ("image", 64, 48)
    assert list((tmp_path / "scratch").iterdir()) == []  # nothing left behind

    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(AttachmentError) as info:
        prepare_file(text)
    assert "neither a picture nor a sound" in info.value.reason and "PNG" in info.value.hint
    broken = tmp_path / "broken.png"
    broken.write_bytes(png(tmp_path / "whole.png").read_bytes()[:300])
    with pytest.raises(media.MediaError) as damaged:
        prepare_file(broken)
    assert "broken.png" in damaged.value.reason and damaged.value.hint
    with pytest.raises(media.MediaError) as missing:
        prepare_file(tmp_path / "gone.png")
    assert "no such file" in missing.value.reason
    with pytest.raises(AttachmentError) as folder:
        prepare_file(tmp_path)
    assert "folder" in folder.value.reason


def test_sound_files_and_their_length(tmp_path: Path) -> None:
    wav = prepare_file(tone(tmp_path / "question.wav", 1.5))
    assert (wav.kind, wav.mime) == ("audio", "audio/wav")
    assert wav.duration_s == pytest.approx(1.5, abs=0.01) and wav.note == ""
    flac = prepare_file(tone(tmp_path / "question.flac", 2.0, fmt="FLAC"))
    assert flac.mime == "audio/flac" and flac.duration_s == pytest.approx(2.0, abs=0.01)
    long = prepare_file(tone(tmp_path / "lecture.wav", 75, rate=8000))
    assert "1:15" in long.note and "3 clips" in long.note  # sent as 30 s clips
    with pytest.raises(media.AudioTooLongError) as info:
        prepare_file(tone(tmp_path / "two-hours.wav", 2 * 3600, rate=100))
    assert "7200 s" in info.value.reason and info.value.hint
    recording = prepare_recording(np.zeros(16_000 * 3, np.float32), "Recording.wav")
    assert recording.duration_s == 3.0 and recording.data.startswith(b"RIFF")
    with pytest.raises(AttachmentError):
        prepare_recording(np.zeros(0, np.float32), "Recording.wav")


# --- the store --------------------------------------------------------------------------


def test_store_is_content_addressed_and_complete(tmp_path: Path) -> None:
    files = AttachmentStore(tmp_path / "attachments")
    data = os.urandom(100_000)
    first = files.put(PreparedFile(data, "image", "image/png", "a.png"))
    second = files.put(PreparedFile(data, "image", "image/png", "b.png"))
    assert first.path == second.path and first.name != second.name
    assert first.sha256 == hashlib.sha256(data).hexdigest()
    assert first.path.read_bytes() == data and files.is_complete(first)
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp left
    files.hold([first])
    assert not files.remove(first.sha256) and first.path.exists()
    files.release([first])
    assert files.remove(first.sha256) and not first.path.exists()
    assert not files.is_complete(first)


# --- the history ------------------------------------------------------------------------


def test_messages_keep_their_attachments_and_thinking(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    with HistoryStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        picture = s.attachments.put(prepare_file(png(tmp_path / "cat.png")))
        clip = s.attachments.put(prepare_file(tone(tmp_path / "ask.wav", 1.0)))
        c = s.create_conversation("pets")
        user = s.add_message(c.id, "user", "What is this?", attachments=[picture, clip])
        writer = s.begin_answer(c.id)
        writer.append_thinking("An orange circle on teal. ")
        writer.append("A drawing of a ball.")
        writer.finish()
    with HistoryStore(path) as s:  # reopened
        user_back, answer = s.messages(c.id)
        assert user_back.id == user.id
        assert [(a.kind, a.name, a.sha256) for a in user_back.attachments] == [
            ("image", "cat.png", picture.sha256),
            ("audio", "ask.wav", clip.sha256),
        ]
        assert user_back.attachments[0].path.read_bytes() == (tmp_path / "cat.png").read_bytes()
        assert (user_back.attachments[0].width, user_back.attachments[0].height) == (320, 240)
        assert user_back.attachments[1].duration_s == pytest.approx(1.0, abs=0.01)
        assert (answer.content, answer.thinking) == (
            "A drawing of a ball.",
            "An orange circle on teal. ",
        )
        assert s.message(user.id).attachments == user_back.attachments  # type: ignore[union-attr]
        # Search finds a message by its text as before (not by its thinking).
        assert [h.message_id for h in s.search("ball")] == [answer.id]
        assert s.search("orange") == []


def test_a_missing_file_is_never_referenced(store: HistoryStore, tmp_path: Path) -> None:
    picture = store.attachments.put(prepare_file(png(tmp_path / "cat.png")))
    picture.path.unlink()
    c = store.create_conversation("x")
    with pytest.raises(HistoryError) as info:
        store.add_message(c.id, "user", "look", attachments=[picture])
    assert "missing" in info.value.reason
    assert store.messages(c.id) == []


def test_deleting_removes_files_no_other_message_uses(store: HistoryStore, tmp_path: Path) -> None:
    shared = store.attachments.put(prepare_file(png(tmp_path / "shared.png")))
    only_a = store.attachments.put(prepare_file(png(tmp_path / "a.png", color="navy")))
    only_b = store.attachments.put(prepare_file(png(tmp_path / "b.png", color="olive")))
    a = store.create_conversation("a")
    b = store.create_conversation("b")
    store.add_message(a.id, "user", "one", attachments=[shared, only_a])
    kept = store.add_message(b.id, "user", "two", attachments=[shared])
    later = store.add_message(b.id, "user", "three", attachments=[only_b])
    assert store.delete_conversation(a.id)
    assert not only_a.path.exists()
    assert shared.path.exists()  # b still uses it
    # Regenerate / edit: deleting messages removes their files the same way...
    store.delete_messages_from(b.id, later.id)
    assert not only_b.path.exists()
    # ...unless the chat still holds them (a draft being edited).
    store.attachments.hold([shared])
    store.delete_messages_from(b.id, kept.id)
    assert shared.path.exists()
    store.attachments.release([shared])
    assert store.referenced_shas() == set()


def test_sweep_removes_crash_leftovers_only(store: HistoryStore, tmp_path: Path) -> None:
    used = store.attachments.put(prepare_file(png(tmp_path / "used.png")))
    c = store.create_conversation("x")
    store.add_message(c.id, "user", "look", attachments=[used])
    draft = store.attachments.put(PreparedFile(b"draft bytes", "image", "image/png", "d.png"))
    orphan = store.attachments.put(PreparedFile(b"old orphan", "image", "image/png", "o.png"))
    temp = used.path.parent / f".{used.path.name}-crash.tmp"
    temp.write_bytes(b"half")
    old = time.time() - STALE_ORPHAN_S - 10
    for path in (orphan.path, temp, used.path):
        os.utime(path, (old, old))
    assert store.sweep_attachments() == 2
    assert used.path.exists() and draft.path.exists()  # referenced, and a fresh draft
    assert not orphan.path.exists() and not temp.exists()


def test_export_puts_the_files_beside_the_document(store: HistoryStore, tmp_path: Path) -> None:
    picture = store.attachments.put(prepare_file(png(tmp_path / "My cat (1).png")))
    clip = store.attachments.put(prepare_file(tone(tmp_path / "ask.wav", 4.0)))
    c = store.create_conversation("Pets")
    store.add_message(c.id, "user", "What is this?", attachments=[picture, clip])
    writer = store.begin_answer(c.id)
    writer.append_thinking("Looks round.")
    writer.append("A ball.")
    writer.finish()
    out = tmp_path / "out"
    md = store.export(c.id, out / "pets.md").read_text(encoding="utf-8")
    files = sorted(p.name for p in (out / "pets_files").iterdir())
    assert files == ["01-My-cat-1.png", "02-ask.wav"]
    assert "![My cat (1).png](pets_files/01-My-cat-1.png)" in md
    assert "[Audio: ask.wav (0:04)](pets_files/02-ask.wav)" in md
    assert "<details><summary>Thinking</summary>\n\nLooks round.\n\n</details>" in md
    assert (out / "pets_files" / "01-My-cat-1.png").read_bytes() == picture.path.read_bytes()
    data = json.loads(store.export(c.id, out / "pets.json").read_text(encoding="utf-8"))
    assert data["format_version"] == 2
    user, answer = data["messages"]
    assert [a["file"] for a in user["attachments"]] == [
        "pets_files/01-My-cat-1.png",
        "pets_files/02-ask.wav",
    ]
    assert user["attachments"][0]["sha256"] == picture.sha256
    assert user["attachments"][0]["width"] == 320
    assert user["attachments"][1]["duration_s"] == pytest.approx(4.0, abs=0.01)
    assert answer["thinking"] == "Looks round." and answer["content"] == "A ball."
    assert (out / "pets_files" / "02-ask.wav").read_bytes() == clip.path.read_bytes()


def test_migrates_a_version_2_database(tmp_path: Path) -> None:
    from gemma_desktop.core.chat import history

    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("BEGIN")
        history._executescript_in_tx(conn, history._SCHEMA_V2)
        history._executescript_in_tx(conn, history._FTS)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO conversations VALUES (1, 'Old', 1.0, 2.0, NULL, NULL)")
        conn.execute(
            "INSERT INTO messages (id, conversation_id, role, content, created_at) "
            "VALUES (1, 1, 'user', 'an old question about tides', 1.5)"
        )
    conn.close()
    with HistoryStore(path) as s:
        assert s.schema_version == 3
        (old,) = s.messages(1)
        assert (old.content, old.thinking, old.attachments) == (
            "an old question about tides",
            "",
            (),
        )
        assert [h.message_id for h in s.search("tides")] == [1]
        assert s.integrity_check() == "ok"


# --- a kill -9 while a file is written -----------------------------------------------------


def test_sigkill_while_attachments_are_written_leaves_no_dangling_reference(
    tmp_path: Path,
) -> None:
    db = tmp_path / "h.sqlite3"
    HistoryStore(db).close()
    rng = random.Random(13)
    committed: set[int] = set()
    deleted: set[int] = set()
    torn_writes = 0

    def note(line: str) -> None:
        kind, _, number = line.partition(" ")
        if kind == "attached":
            committed.add(int(number))
        elif kind == "deleting":
            deleted.add(int(number))

    round_no = 0
    # At least 12 kills, and more until one has landed inside a file's write (its
    # temporary file is left): the case the store's write order exists for.
    while round_no < 12 or (torn_writes == 0 and round_no < 40):
        round_no += 1
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.core.chat.history_writer",
                str(db),
                str(round_no),
                "--attachments",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        writes_wanted, writes = rng.randint(1, 5), 0
        for line in proc.stdout:
            note(line.strip())
            if line.startswith("writing"):
                writes += 1
                if writes >= writes_wanted:
                    time.sleep(rng.random() * 0.006)  # inside the write, the fsync or the commit
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        for line in proc.stdout.read().splitlines():
            note(line.strip())
        proc.stdout.close()
        objects = db.parent / "attachments" / "objects"
        torn_writes += sum(1 for p in objects.rglob(".*.tmp"))
        with HistoryStore(db, recover=False) as s:
            assert s.integrity_check() == "ok"
            messages = [m for c in s.list_conversations(limit=100) for m in s.messages(c.id)]
            for message in messages:
                for attachment in message.attachments:
                    # Every reference points at the whole file its name promises.
                    data = attachment.path.read_bytes()
                    assert len(data) == attachment.size, (message.id, attachment.name)
                    assert hashlib.sha256(data).hexdigest() == attachment.sha256
            # No committed message is lost (the writer deletes every third on purpose).
            assert committed - deleted <= {m.id for m in messages}
    assert len(committed) >= 8
    # Some kills landed while a file was half written (its temporary file is left).
    assert torn_writes >= 1
