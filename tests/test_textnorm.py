import pytest

from clinasr.textnorm import int_to_words, normalize, number_to_words, ordinal_words


@pytest.mark.parametrize("raw, want", [
    ("Take 5 mg PO BID.", "take five milligrams by mouth twice daily"),
    ("0.5 mg", "zero point five milligrams"),
    ("2,500 units", "two thousand five hundred units"),
    ("BP 120/80", "bp one hundred twenty over eighty"),
    ("OK, no history of warfarin!", "okay no history of warfarin"),
    ("o.k. then", "okay then"),
    ("follow-up in 2 weeks", "follow up in two weeks"),
    ("Levothyroxine 125 mcg", "levothyroxine one hundred twenty five micrograms"),
    ("the 3rd dose", "the third dose"),
    ("10%  dextrose", "ten percent dextrose"),
    ("  Umm,   he's fine ", "um he's fine"),
])
def test_normalize(raw, want):
    assert normalize(raw) == want


def test_normalize_is_idempotent():
    for s in ["take 5 mg po bid", "no history of warfarin", "one hundred twenty five micrograms"]:
        assert normalize(normalize(s)) == normalize(s)


def test_numbers():
    assert int_to_words(0) == "zero"
    assert int_to_words(1001) == "one thousand one"
    assert int_to_words(1_234_567) == "one million two hundred thirty four thousand five hundred sixty seven"
    assert number_to_words("12.5") == "twelve point five"
    assert ordinal_words(21) == "twenty first"
    assert ordinal_words(40) == "fortieth"
