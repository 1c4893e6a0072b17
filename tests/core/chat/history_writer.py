"""A small program that streams answers into the history, for the crash tests.

``python -m tests.core.chat.history_writer DB SEED [COUNT]`` writes
conversations of one user message and one streamed answer each. After each
answer's final commit it prints ``done <message_id> <sha256 of the text>`` and
flushes stdout, so the parent knows which answers must survive a ``kill -9``.
It also prints ``streaming <message_id>`` once a partial answer is on disk.

``python -m tests.core.chat.history_writer DB SEED --attachments`` instead writes user
messages that each carry two attachment files (1-6 MB of random bytes; one of them
shared with the message before), printing ``writing`` before a file is written and
``attached <message_id>`` once the message that refers to it is committed (and
``deleting <message_id>`` before every third message is deleted again).
"""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

from gemma_desktop.core.chat.attachments import PreparedFile
from gemma_desktop.core.chat.history import HistoryStore

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dogs",
    "while",
    "gemma",
    "writes",
    "poems",
    "about",
    "rivers",
]


def write_attachments(store: HistoryStore, seed: int) -> None:
    rng = random.Random(seed)
    conversation = store.create_conversation(f"attachments {seed}")
    previous = None
    for n in range(1_000_000):
        data = rng.randbytes(rng.randint(1024 * 1024, 6 * 1024 * 1024))
        print("writing", flush=True)
        fresh = store.attachments.put(
            PreparedFile(data, "image", "image/png", f"picture-{seed}-{n}.png", width=8, height=8)
        )
        files = [fresh] if previous is None else [previous, fresh]
        message = store.add_message(conversation.id, "user", f"look {n}", attachments=files)
        print(f"attached {message.id}", flush=True)
        previous = fresh
        if n % 3 == 2:  # deletions run too: their files go, the shared one stays
            print(f"deleting {message.id}", flush=True)
            store.delete_messages_from(conversation.id, message.id)
            previous = None


def main(argv: list[str]) -> int:
    if "--attachments" in argv:
        store = HistoryStore(Path(argv[0]), recover=False)
        write_attachments(store, int(argv[1]))
        return 0
    db, seed = Path(argv[0]), int(argv[1])
    count = int(argv[2]) if len(argv) > 2 else 1_000_000
    rng = random.Random(seed)
    store = HistoryStore(db, recover=False)
    for n in range(count):
        conversation = store.create_conversation(f"writer {seed} chat {n}", model_id="test")
        store.add_message(conversation.id, "user", f"prompt {seed}-{n}: tell me a story")
        writer = store.begin_answer(conversation.id, model_id="test")
        writer.flush_interval_s = 0.0
        announced = False
        for _ in range(rng.randint(20, 60)):
            writer.append(rng.choice(WORDS) + " ")
            if rng.random() < 0.3:
                writer.flush()
                if not announced:
                    print(f"streaming {writer.message_id}", flush=True)
                    announced = True
        writer.finish("complete", {"completion_tokens": 1})
        digest = hashlib.sha256(writer.text.encode()).hexdigest()
        print(f"done {writer.message_id} {digest}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
