"""The one text normaliser, shared by data generation (references) and evaluation (hypotheses).

ASR references and hypotheses are compared after the same normalisation: lower case, numbers spoken
as words ("5 mg" -> "five milligrams", "0.5" -> "zero point five", "1st" -> "first"), units and
common clinician abbreviations expanded, "ok"/"okay" and other spelling variants unified,
hyphens and slashes split into words, punctuation removed, whitespace collapsed.
"""

from __future__ import annotations

import re
import unicodedata

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
        "twelve": "twelfth"}

UNITS = {
    "mg": "milligrams", "mgs": "milligrams", "mcg": "micrograms", "µg": "micrograms", "ug": "micrograms",
    "g": "grams", "gm": "grams", "kg": "kilograms", "ml": "milliliters", "mls": "milliliters", "l": "liters",
    "meq": "milliequivalents", "iu": "international units", "u": "units", "%": "percent",
    "mmhg": "millimeters of mercury", "bpm": "beats per minute",
}
ABBREVIATIONS = {
    "po": "by mouth", "iv": "i v", "im": "i m", "sc": "subcutaneous", "subq": "subcutaneous", "prn": "as needed",
    "bid": "twice daily", "tid": "three times daily", "qid": "four times daily", "qd": "once daily",
    "qhs": "at bedtime", "q4h": "every four hours", "q6h": "every six hours", "q8h": "every eight hours",
    "q12h": "every twelve hours", "hx": "history", "pt": "patient", "sob": "shortness of breath",
}
VARIANTS = {"ok": "okay", "o.k.": "okay", "mm-hmm": "mhm", "mmhmm": "mhm", "uhm": "um", "umm": "um", "uhh": "uh",
            "alright": "all right", "dr": "doctor", "mr": "mister", "mrs": "missus", "vs": "versus",
            "millilitres": "milliliters", "millilitre": "milliliter", "litres": "liters", "litre": "liter",
            "millimetre": "millimeter", "millimetres": "millimeters", "centimetre": "centimeter",
            "centimetres": "centimeters", "colour": "color", "tumour": "tumor", "oedema": "edema",
            "haemoglobin": "hemoglobin", "oesophagus": "esophagus", "anaemia": "anemia", "paediatric": "pediatric",
            "haemorrhage": "hemorrhage", "diarrhoea": "diarrhea", "ischaemia": "ischemia", "oestrogen": "estrogen",
            "anaesthetic": "anesthetic", "anaesthesia": "anesthesia", "leukaemia": "leukemia"}


def int_to_words(n: int) -> str:
    if n < 0:
        return "minus " + int_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + int_to_words(rest))
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            rest = n % value
            return int_to_words(n // value) + f" {name}" + ("" if rest == 0 else " " + int_to_words(rest))
    raise AssertionError(n)


def number_to_words(token: str) -> str:
    """'5' -> 'five', '0.5' -> 'zero point five', '2,500' -> 'two thousand five hundred'."""
    token = token.replace(",", "")
    if "." in token:
        whole, frac = token.split(".", 1)
        return (int_to_words(int(whole or "0")) + " point " + " ".join(_ONES[int(d)] for d in frac)).strip()
    return int_to_words(int(token))


def ordinal_words(n: int) -> str:
    words = int_to_words(n).split()
    last = words[-1]
    if last in _ORD:
        words[-1] = _ORD[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


_NUM = r"\d[\d,]*(?:\.\d+)?"


def normalize(text: str) -> str:
    """Normalise a reference or hypothesis for scoring and for manifests."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = t.replace("’", "'")
    t = re.sub(r"\bo\.k\.?(?!\w)", "okay", t)
    t = re.sub(r"(\d+)(st|nd|rd|th)\b", lambda m: ordinal_words(int(m.group(1))), t)
    t = re.sub(r"\b(\d{1,2}):(\d{2})\b", lambda m: m.group(1) + ("" if m.group(2) == "00" else " " + str(int(m.group(2)))), t)
    t = re.sub(rf"({_NUM})\s*/\s*({_NUM})", r"\1 over \2", t)  # 120/80 -> 120 over 80
    t = t.replace("&", " and ").replace("°", " degrees ")
    t = re.sub(rf"({_NUM})\s*(%)", r"\1 percent", t)
    t = re.sub(rf"({_NUM})\s*([a-zµ]+)\b", lambda m: f"{m.group(1)} {UNITS.get(m.group(2), m.group(2))}", t)
    t = re.sub(_NUM, lambda m: " " + number_to_words(m.group(0)) + " ", t)
    t = re.sub(r"(?<=\w)[-/](?=\w)", " ", t)  # hyphens and slashes between words
    t = re.sub(r"[^\w\s']", " ", t)
    t = re.sub(r"(?<!\w)'|'(?!\w)", " ", t)  # quotes, keep apostrophes inside words
    words = []
    for w in t.split():
        w = VARIANTS.get(w, w)
        w = ABBREVIATIONS.get(w, w)
        words.append(w)
    return " ".join(" ".join(words).split())

