"""Long answers split the way a person would: paragraph, line, sentence, word; never mid-word."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.telegram.render import TELEGRAM_LIMIT, Part, render, utf16_length

Unit = tuple[str, str | None, int]  # entity type, its language or url, one UTF-16 unit


def entity_units(part: Part, at: int) -> set[Unit]:
    """The UTF-16 units each entity of `part` covers, counted in the whole from `at`."""
    return {
        (entity.type, entity.language or entity.url, at + unit)
        for entity in part.entities
        for unit in range(entity.offset, entity.offset + entity.length)
    }


def split_faithfully(markdown: str, limit: int) -> list[Part]:
    """render(markdown, limit), checked against the unsplit rendering.

    Every part is within the limit, neither blank nor holding half a surrogate pair; the
    parts are the whole in order, with only whitespace at the cuts left out; every entity
    lies within its part and styles exactly the units it styled in the whole.
    """
    [unsplit] = render(markdown, limit=10**9)
    whole = unsplit.text
    parts = render(markdown, limit)
    position = 0
    seen: set[int] = set()  # UTF-16 units of the whole that made it into a part
    styled: set[Unit] = set()
    for part in parts:
        assert part.text.strip()
        assert utf16_length(part.text) <= limit
        part.text.encode("utf-16-le")  # raises on half a surrogate pair
        skipped = len(whole[position:]) - len(whole[position:].lstrip())
        start = next(
            (i for i in range(position, position + skipped + 1) if whole.startswith(part.text, i)),
            None,
        )
        assert start is not None, f"{part.text!r} is not the whole's text after {position}"
        at = utf16_length(whole[:start])
        seen.update(range(at, at + utf16_length(part.text)))
        for entity in part.entities:
            assert entity.length > 0
            assert entity.offset >= 0 and entity.offset + entity.length <= utf16_length(part.text)
        styled |= entity_units(part, at)
        position = start + len(part.text)
    assert not whole[position:].strip()
    assert styled == {unit for unit in entity_units(unsplit, 0) if unit[2] in seen}
    return parts


def sentences(count: int, seed: int = 0) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "омега", "ещё", "word", "текст"]
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize()
        + rng.choice([".", "!", "?", "…"])
        for _ in range(count)
    ]


def test_prose_without_line_breaks_splits_at_sentence_ends() -> None:
    answer = " ".join(sentences(400))
    assert len(answer) >= 9000 and "\n" not in answer
    parts = split_faithfully(answer, TELEGRAM_LIMIT)
    assert len(parts) >= 3
    assert all(part.text.endswith((".", "!", "?", "…")) for part in parts)
    assert " ".join(part.text for part in parts) == answer  # no word cut, none lost


def test_words_without_punctuation_split_at_spaces() -> None:
    words = [word.rstrip(".!?…") for word in " ".join(sentences(40, seed=1)).lower().split()]
    answer = " ".join(words)
    parts = split_faithfully(answer, 60)
    assert len(parts) > 5
    assert [word for part in parts for word in part.text.split(" ")] == words


def test_paragraph_break_beats_a_later_line_break() -> None:
    answer = "First paragraph goes here, long\n\nNext one\nhas lines. And more words follow"
    parts = split_faithfully(answer, 60)
    assert parts[0].text == "First paragraph goes here, long"


def test_line_break_beats_a_later_sentence_end() -> None:
    answer = "A line of some words\nthen a sentence. Another one. And words after it"
    parts = split_faithfully(answer, 60)
    assert parts[0].text == "A line of some words"


def test_sentence_end_beats_a_later_space() -> None:
    answer = "Всё хорошо, спасибо! Как дела у тебя сегодня вечером дома и там"
    parts = split_faithfully(answer, 50)
    assert [part.text for part in parts] == [
        "Всё хорошо, спасибо!", "Как дела у тебя сегодня вечером дома и там",
    ]
    # a quote or bracket may close the sentence after its mark
    parts = split_faithfully("Он сказал: «Хватит!» Потом ушёл домой и долго молчал", 40)
    assert parts[0].text == "Он сказал: «Хватит!»"


def test_an_early_paragraph_break_gives_way_to_a_later_line_break() -> None:
    # A paragraph break in the first quarter would leave a stub of a message.
    answer = "Title\n\nline one of the body\nline two of the body\nline three of the body"
    parts = split_faithfully(answer, 60)
    assert parts[0].text == "Title\n\nline one of the body\nline two of the body"


def test_a_word_longer_than_a_message_is_cut_and_nothing_is_lost() -> None:
    word = "".join(chr(ord("a") + n % 26) for n in range(250))
    parts = split_faithfully(f"Short words {word} end here", 100)
    # The word must be cut anyway, so cutting before it too would only add a part.
    assert [part.text for part in parts] == [
        "Short words " + word[:88], word[88:188], word[188:] + " end here",
    ]


def test_code_block_cut_in_two_stays_two_well_formed_blocks() -> None:
    lines = [f"    total += {n}" for n in range(20)]
    answer = "Code:\n\n```python\ndef f(total):\n" + "\n".join(lines) + "\n```\n\nDone."
    parts = split_faithfully(answer, 120)
    code_parts = [part for part in parts if any(e.type == "pre" for e in part.entities)]
    assert len(code_parts) >= 3
    for part in code_parts:
        [pre] = [entity for entity in part.entities if entity.type == "pre"]
        assert pre.language == "python"
    # each cut fell between code lines, and the next line keeps its indentation
    code = "\n".join(
        part.text[pre.offset : pre.offset + pre.length]
        for part in code_parts
        for pre in part.entities
    )
    assert code.splitlines() == ["def f(total):", *lines]


def test_bold_text_cut_in_two_is_bold_in_both_parts() -> None:
    answer = "**" + " ".join(sentences(6, seed=2)) + "**"
    parts = split_faithfully(answer, 80)
    assert len(parts) >= 2
    for part in parts:
        assert [(e.type, e.offset, e.length) for e in part.entities] == [
            ("bold", 0, utf16_length(part.text)),
        ]


def test_whitespace_at_a_cut_is_dropped_and_entities_shift() -> None:
    answer = "Intro words here.  \n   **Bold start** of the next line goes on and on"
    parts = split_faithfully(answer, 40)
    assert parts[0].text == "Intro words here."
    assert parts[1].text.startswith("Bold start")
    assert [(e.type, e.offset, e.length) for e in parts[1].entities] == [("bold", 0, 10)]


def test_emoji_near_a_cut_are_never_split_in_half() -> None:
    for limit in range(20, 31):
        parts = split_faithfully("😀 " * 10 + "a😀b" * 7 + "😀" * 30, limit)
        assert any(utf16_length(part.text) in (limit - 1, limit) for part in parts)
        assert re.sub(r"\s", "", "".join(p.text for p in parts)).count("😀") == 10 + 7 + 30


def test_an_answer_within_the_limit_is_one_part_and_a_blank_one_none() -> None:
    assert [part.text for part in render("Hello, **world**!")] == ["Hello, world!"]
    assert render(" \n\n ") == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["a", "b", "ж", "😀", " ", "\xa0", "\n", "\n\n", ".", "!", "**", "`"]))
    .map("".join),
    st.integers(min_value=2, max_value=60),
)
def test_any_text_splits_within_the_limit_losing_nothing(markdown: str, limit: int) -> None:
    if not render(markdown, limit=10**9):
        assert render(markdown, limit) == []
        return
    split_faithfully(markdown, limit)
