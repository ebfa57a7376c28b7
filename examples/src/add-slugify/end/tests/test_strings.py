from textutils.strings import slugify, truncate


def test_truncate_short_text_unchanged():
    assert truncate("abc", 5) == "abc"


def test_truncate_long_text():
    assert truncate("abcdefgh", 6) == "abc..."


def test_slugify():
    assert slugify("Hello, World!") == "hello-world"
    assert slugify("  many   spaces -- and dashes ") == "many-spaces-and-dashes"
    assert slugify("Café 2025") == "caf-2025"
    assert slugify("---") == ""
