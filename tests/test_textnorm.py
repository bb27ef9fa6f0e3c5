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


# Real outputs of an off-the-shelf model (faster-whisper tiny.en, greedy) on the project's synthetic clinical
# audio, recorded once with `clinasr evaluate --reference whisper:tiny.en`: digits, casing, punctuation,
# "All right", "IV", "12th", "100%", British spellings — what inflates WER between systems.
def _whisper_rows():
    import json
    from pathlib import Path

    return [json.loads(x) for x in (Path(__file__).parent / "data" / "whisper_tiny_en_clinical.jsonl").read_text().splitlines()]


def test_real_whisper_outputs_normalise_to_plain_spoken_words():
    import re

    rows = _whisper_rows()
    assert len(rows) >= 30
    for r in rows:
        h = normalize(r["hypothesis"])
        assert h == normalize(h)                            # idempotent on real output too
        assert not re.search(r"[0-9A-Z.,!?;:%&\"-]", h), (r["hypothesis"], h)
    raw = {r["hypothesis"]: normalize(r["hypothesis"]) for r in rows}
    assert raw["Give water in 0.5 tablet, subling will it out."] == "give water in zero point five tablet subling will it out"
    assert raw["continue more for 10 tablets IV this needed."] == "continue more for ten tablets i v this needed"
    assert normalize("All right, patient takes insulin") == normalize("alright patient takes insulin")
    assert normalize("150 millimetre") == "one hundred fifty millimeter" and normalize("8:30 & 9:00") == "eight thirty and nine"


def test_normaliser_lowers_wer_against_real_whisper_outputs():
    """The same real outputs scored with the shared normaliser vs a naive lower-case split: digits,
    punctuation and casing no longer count as errors (overall, and on the rows with digits above all)."""
    import re

    from clinasr.metrics import align

    def wer(norm, rows):
        errs = words = 0
        for r in rows:
            ref, hyp = norm(r["text"]).split(), norm(r["hypothesis"]).split()
            errs += sum(op != "ok" for op, _, _ in align(ref, hyp))
            words += len(ref)
        return errs / words

    rows = _whisper_rows()
    with_digits = [r for r in rows if re.search(r"\d", r["hypothesis"])]
    assert len(with_digits) >= 5
    assert wer(normalize, rows) < wer(str.lower, rows)
    assert wer(normalize, with_digits) < wer(str.lower, with_digits) - 0.05
