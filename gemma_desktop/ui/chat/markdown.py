"""Markdown for a streaming answer: split into blocks as text arrives, render each once.

An answer is a sequence of blocks (paragraphs, headings, lists, fenced code).
:class:`BlockSplitter` receives the text as it streams and hands out each
block once it is complete; only the unfinished last block (the *tail*) is
rendered again while more text arrives. Rendering cost therefore depends on
the size of the current block, not of the whole answer.

:class:`MarkdownRenderer` turns a block into the HTML subset QTextDocument
understands. Raw HTML in the model's output is shown as text, never
interpreted. Fenced code gets a header line with its language and a ``copy:N``
link that the chat view handles (the code's text is kept in
:attr:`MarkdownRenderer.code_blocks`).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt

#: Starts the header line of every rendered code block (the chat view finds it by this).
CODE_HEADER_STYLE = "-qt-code-header:1; "
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


@dataclass
class BlockSplitter:
    """Cuts streaming Markdown into complete blocks and an unfinished tail.

    A block ends at a blank line outside fenced code, and a fenced code block
    ends at its closing fence. Only the tail is scanned again when text
    arrives, and only from its last complete line on, so feeding is linear in
    the answer's length.
    """

    tail: str = ""
    _in_fence: str | None = None
    _scanned: int = 0  # offset in ``tail`` up to which complete lines were classified
    #: Outside code, a tail longer than this is cut at its last line break, so an
    #: answer without blank lines still renders in bounded pieces.
    max_tail: int = 4000

    def feed(self, text: str) -> list[str]:
        """Add ``text``; return the blocks it completed (possibly none)."""
        self.tail += text
        done: list[str] = []
        while True:
            newline = self.tail.find("\n", self._scanned)
            if newline < 0:
                break
            line = self.tail[self._scanned : newline]
            line_start, self._scanned = self._scanned, newline + 1
            fence = _FENCE_RE.match(line)
            if self._in_fence is not None:
                marker = fence.group(1) if fence else ""
                if (
                    fence
                    and marker[0] == self._in_fence[0]
                    and len(marker) >= len(self._in_fence)
                    and not fence.group(2).strip()
                ):
                    self._in_fence = None
                    done.append(self._cut(self._scanned))
                continue
            if fence:
                # Text before an opening fence is a block of its own.
                if line_start > 0 and self.tail[:line_start].strip():
                    done.append(self._cut(line_start))
                self._in_fence = fence.group(1)
                continue
            if not line.strip():
                block = self._cut(self._scanned)
                if block.strip():
                    done.append(block)
            elif self._scanned > self.max_tail:
                done.append(self._cut(self._scanned))
        return done

    def _cut(self, end: int) -> str:
        block, self.tail = self.tail[:end], self.tail[end:]
        self._scanned -= end
        return block

    def finish(self) -> str:
        """The remaining tail (the answer has ended)."""
        rest, self.tail, self._scanned, self._in_fence = self.tail, "", 0, None
        return rest

    @property
    def in_code(self) -> bool:
        return self._in_fence is not None


@dataclass
class MarkdownRenderer:
    """Markdown -> QTextDocument HTML, with code blocks that can be copied."""

    code_bg: str = "#f2f4f7"
    code_header: str = "#e4e8ee"
    muted: str = "#5f6673"
    mono_family: str = "monospace"
    code_blocks: dict[int, str] = field(default_factory=dict)
    _md: Any = None
    _next_code_id: int = 0

    def __post_init__(self) -> None:
        md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        md.enable("table")
        md.enable("strikethrough")

        def fence(_renderer: Any, tokens: list[Any], idx: int, _opts: Any, env: Any) -> str:
            return self._render_fence(tokens[idx], env)

        def code_inline(_renderer: Any, tokens: list[Any], idx: int, _opts: Any, _env: Any) -> str:
            return (
                f'<span style="font-family:{self.mono_family}; '
                f'background-color:{self.code_bg};">{html.escape(tokens[idx].content)}</span>'
            )

        md.add_render_rule("fence", fence)
        md.add_render_rule("code_block", fence)
        md.add_render_rule("code_inline", code_inline)
        self._md = md

    def set_colors(
        self, code_bg: str, code_header: str, muted: str, mono_family: str | None = None
    ) -> None:
        self.code_bg, self.code_header, self.muted = code_bg, code_header, muted
        if mono_family:
            self.mono_family = f"'{mono_family}'"

    def render(self, text: str, *, code_id: int | None = None) -> str:
        """HTML for ``text``. ``code_id`` reuses an id for a block that is re-rendered."""
        env: dict[str, Any] = {"code_id": code_id}
        return str(self._md.render(text, env))

    def new_code_id(self) -> int:
        self._next_code_id += 1
        return self._next_code_id

    def reset(self) -> None:
        self.code_blocks.clear()

    def _render_fence(self, token: Any, env: dict[str, Any]) -> str:
        code = token.content
        lang = (token.info or "").strip().split(" ")[0] if token.type == "fence" else ""
        code_id = env.get("code_id")
        if code_id is None:
            code_id = self.new_code_id()
        else:
            env["code_id"] = None  # only the first code block reuses the given id
        self.code_blocks[code_id] = code
        body = html.escape(code.rstrip("\n")) or "&nbsp;"
        label = html.escape(lang) if lang else "code"
        # Paragraphs with a background rather than a table: QTextDocument lays
        # out tables (frames) at a cost that grows with the document.
        return (
            f'<p style="{CODE_HEADER_STYLE}background-color:{self.code_header}; '
            f'margin-top:8px; margin-bottom:0px;">'
            f'<span style="color:{self.muted};">&nbsp;{label}&nbsp;&nbsp;</span>'
            f'<a href="copy:{code_id}">Copy code</a></p>'
            f'<pre style="background-color:{self.code_bg}; font-family:{self.mono_family}; '
            f'margin-top:0px; margin-bottom:8px;">{body}</pre>'
        )


def plain_to_html(text: str) -> str:
    """Plain text (a user's message) as HTML that keeps its line breaks."""
    escaped = html.escape(text)
    return "<p>" + escaped.replace("\n", "<br/>") + "</p>"
