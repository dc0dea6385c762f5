"""The one error type users see (the CLI prints it as one red line and exits 2), and the wording of messages."""

import re


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix."""


class CheckFailed(Exception):
    """A parity check or an accuracy gate failed (the CLI exits 1)."""


# Letters whose names start with a vowel sound, for names read letter by letter (NER, fp16, rtx): "an fp16".
_VOWEL_LETTERS = set("aefhilmnorsx")
_A_BEFORE = ("one", "once", "uni", "uint", "use", "usu", "uti", "eu")  # a vowel letter, a consonant sound
_AN_BEFORE = ("hour", "honest", "honor", "honour", "heir")  # a silent h


def with_article(word: object) -> str:
    """`word` after "a" or "an" as it is read aloud: an embed, a classify, an albert, a gpt2, an fp16, a kv-inplace,
    an int8, an 8-token, an 11-token, a 32-token. For messages that put a task, family or variant name after "a"."""
    text = str(word)
    lower = text.lower()
    digits = re.match(r"\d+", text)
    if digits:  # 8, 80–89, 800…; 11 and 18 (and 11 000, 18 000 …)
        number = digits.group()
        an = number[0] == "8" or (len(number) % 3 == 2 and number[:2] in ("11", "18"))
    elif lower.startswith(_AN_BEFORE):
        an = True
    elif lower.startswith(_A_BEFORE):
        an = False
    else:
        letters = re.match(r"[a-z]*", lower).group()
        spelled = text.isupper() and len(letters) > 1 or (letters and not re.search(r"[aeiouy]", letters))
        first = letters[:1]
        an = first in _VOWEL_LETTERS if spelled else first in ("a", "e", "i", "o", "u")
    return f"{'an' if an else 'a'} {text}"
