"""Streaming Markdown: blocks come out once and whole, whatever the chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gemma_desktop.ui.chat.markdown import BlockSplitter, MarkdownRenderer, plain_to_html

DOC = (
    "# Title\n\nFirst paragraph with **bold**.\nSecond line.\n\n"
    "- one\n- two\n\n"
    "```python\ndef f():\n\n    return 1\n```\n"
    "After the code.\n\n"
    "~~~\nraw ``` inside\n~~~\n\nTail without end"
)


def test_blocks_split_at_blank_lines_and_fences() -> None:
    splitter = BlockSplitter()
    blocks = splitter.feed(DOC)
    assert blocks == [
        "# Title\n\n",
        "First paragraph with **bold**.\nSecond line.\n\n",
        "- one\n- two\n\n",
        "```python\ndef f():\n\n    return 1\n```\n",
        "After the code.\n\n",
        "~~~\nraw ``` inside\n~~~\n",
    ]
    # The blank line inside the fence did not end the code block; blank lines
    # between blocks are dropped; the unfinished tail waits.
    assert splitter.tail == "Tail without end"
    assert splitter.finish() == "Tail without end"


def test_open_fence_is_reported_as_code() -> None:
    splitter = BlockSplitter()
    assert splitter.feed("Intro\n```js\nlet a = 1;\n") == ["Intro\n"]
    assert splitter.in_code
    assert splitter.feed("```\n") == ["```js\nlet a = 1;\n```\n"]
    assert not splitter.in_code


def test_long_paragraph_is_cut_at_line_breaks() -> None:
    splitter = BlockSplitter(max_tail=100)
    blocks = splitter.feed("word " * 30 + "\n" + "more " * 5)
    assert blocks == ["word " * 30 + "\n"]
    assert splitter.tail == "more " * 5


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_chunking_never_changes_the_blocks(cuts: list[int]) -> None:
    whole = BlockSplitter()
    expected = [*whole.feed(DOC), whole.finish()]
    pieces, pos = [], 0
    for size in cuts:
        pieces.append(DOC[pos : pos + size])
        pos += size
    pieces.append(DOC[pos:])
    split = BlockSplitter()
    got: list[str] = []
    for piece in pieces:
        got.extend(split.feed(piece))
    got.append(split.finish())
    assert got == expected
    assert "".join(got).replace("\n", "") == DOC.replace("\n", "")


def test_renderer_escapes_html_and_registers_code() -> None:
    renderer = MarkdownRenderer()
    out = renderer.render("<script>alert(1)</script>\n\n```sh\necho <hi>\n```\n")
    assert "<script>" not in out
    assert "&lt;script&gt;" in out
    assert 'href="copy:1"' in out
    assert renderer.code_blocks[1] == "echo <hi>\n"
    assert "echo &lt;hi&gt;" in out


def test_rerendered_tail_keeps_its_code_id() -> None:
    renderer = MarkdownRenderer()
    code_id = renderer.new_code_id()
    renderer.render("```\npartial", code_id=code_id)
    renderer.render("```\npartial and more", code_id=code_id)
    assert renderer.code_blocks == {code_id: "partial and more"}


def test_plain_text_keeps_line_breaks() -> None:
    assert plain_to_html("a <b>\nc") == "<p>a &lt;b&gt;<br/>c</p>"
