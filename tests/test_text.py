from contriever_repro.data.text import collapse_whitespace, normalize_text, passage_text, prepare


def test_normaliser_maps_typography():
    s = (
        "\u201cquote\u201d \u2018x\u2019 a\u2013b 5\u2032 6\u2033 wait\u2026 "
        "1\u20442 soft\u00adhyphen"
    )
    assert normalize_text(s) == "\"quote\" 'x' a-b 5' 6'' wait... 1/2 softhyphen"


def test_normaliser_keeps_tilde_and_drops_control_chars():
    assert normalize_text("a~b\u0001c\u000bd") == "a~bc d"


def test_passage_text_title_rules():
    assert passage_text("Title", "body") == "Title body"
    assert passage_text("", "body") == "body"
    assert passage_text(None, "body") == "body"
    assert passage_text("T", "body", use_title=False) == "body"


def test_prepare_normalises_then_lowercases():
    assert prepare("\u201cAB\u201d", lowercase=True, normalize=True) == '"ab"'


def test_collapse_whitespace():
    assert collapse_whitespace("  a \n\t b ") == "a b"


def test_normaliser_rewrites_spaced_ellipsis_after_the_table():
    assert normalize_text("wait . . . then") == "wait ... then"
    # Only with spaces on both sides, and without overlaps (str.replace, as the authors).
    assert normalize_text("a. . . b") == "a. . . b"
    assert normalize_text("x . . . . . . y") == "x ... . . . y"
    # Spaces or dots that appear only through the character table count too: the
    # authors replace those characters before the " . . . " rewrite.
    assert normalize_text("a\u000b. .\u00ad . b") == "a ... b"
    assert normalize_text("a .\u0001 . . b") == "a ... b"
