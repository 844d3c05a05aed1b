from __future__ import annotations

from modelhost.llm.text import TextAssembler


def feed_all(assembler: TextAssembler, pieces: list[bytes]) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, stopped = assembler.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    out.append(assembler.flush())
    return "".join(out), False


def test_multibyte_characters_split_across_tokens() -> None:
    data = "naïve 日本 🙂".encode()
    pieces = [data[i : i + 1] for i in range(len(data))]  # worst case: one byte per token
    assembler = TextAssembler()
    emitted = [assembler.feed(p)[0] for p in pieces]
    assert "".join(emitted) == "naïve 日本 🙂"
    assert all("\ufffd" not in e for e in emitted)


def test_incomplete_character_at_the_end_becomes_replacement() -> None:
    assembler = TextAssembler()
    assert assembler.feed("a日".encode()[:3]) == ("a", False)
    assert assembler.flush() == "\ufffd"


def test_stop_string_is_never_emitted_even_across_tokens() -> None:
    assembler = TextAssembler(["STOP"])
    emitted = []
    for piece in [b"hello S", b"T", b"O", b"P and more"]:
        text, stopped = assembler.feed(piece)
        emitted.append(text)
        if stopped:
            break
    assert stopped
    assert "".join(emitted) == "hello "
    assert emitted[0] == "hello "  # "S" was held back


def test_false_alarm_is_released() -> None:
    text, stopped = feed_all(TextAssembler(["STOP"]), [b"a ST", b"OVE", b" b"])
    assert (text, stopped) == ("a STOVE b", False)


def test_earliest_of_several_stops_wins() -> None:
    text, stopped = feed_all(TextAssembler(["world", "lo w"]), [b"hello world"])
    assert (text, stopped) == ("hel", True)


def test_held_text_is_flushed_at_the_end() -> None:
    text, stopped = feed_all(TextAssembler(["</s>"]), [b"abc</"])
    assert (text, stopped) == ("abc</", False)
