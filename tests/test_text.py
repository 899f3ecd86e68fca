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
