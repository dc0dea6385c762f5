"""The one error type users see (the CLI prints it as one red line and exits 2), and the wording of messages."""

import re
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or environment, with a message that names the fix.

    A message speaks the Python API's words. `fields` lists the arguments it names, as identifiers (the keyword
    names, which are also the Triton models' request inputs: `max_new_tokens`), and `switch` an argument that would
    avoid the error with what it does, e.g. ("truncate", "to keep its tail"), offered after the message ("… or
    pass truncate=True to keep its tail"). `render` words it for another audience: the CLI names its flags
    (`--max-new-tokens`, `--truncate`), a Triton client, which has no such switch, is not offered one."""

    def __init__(
        self, message: str = "", *, fields: tuple[str, ...] | str = (), switch: tuple[str, str] | None = None
    ):
        self.message = message
        self.fields = (fields,) if isinstance(fields, str) else tuple(fields)
        self.switch = switch
        super().__init__(self.render())

    def render(self, name: Callable[[str], str] | None = None, switch: bool = True) -> str:
        """The message with each field spelled `name(field)` (default: as it is), and the switch offered (as
        `name(key)`, or `key=True` without `name`) unless `switch` is False."""
        text = self.message
        if name is not None:
            for field in self.fields:
                spelled = name(field)
                text = re.sub(rf"(?<![\w-]){re.escape(field)}(?!\w)", lambda _, s=spelled: s, text)
        if self.switch and switch:
            key, does = self.switch
            text += f" or pass {name(key) if name else key + '=True'} {does}"
        return text

    def __reduce__(self):  # pickled (worker processes) with its fields, not just its text
        return _rebuild, (type(self), self.message, self.fields, self.switch)


def _rebuild(cls, message, fields, switch):
    return cls(message, fields=fields, switch=switch)


def cli_flag(field: str) -> str:
    """A Python keyword as the CLI spells its flag: max_new_tokens → --max-new-tokens."""
    return "--" + field.replace("_", "-")


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


class UnpairedRows(UserWarning):
    """A bundle built before `optimize` paired rows at MatMulNBits block ≥ 64 (`Bundle.unpaired`): BatchEngine may
    hand a request other tokens than it gets alone; `trtpipe optimize … --overwrite` rebuilds it."""
