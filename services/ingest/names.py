"""File and folder names that are not valid UTF-8 (issue #13).

On Linux a name is any bytes. Python turns the bytes that are not UTF-8 into lone surrogates
(surrogateescape: b"caf\\xe9.png" is listed as "caf\\udce9.png"), a str that cannot be encoded as UTF-8
later: writing it to report.md, or into a protobuf string field, raises UnicodeEncodeError (and
json.dumps writes it as an escaped lone surrogate that strict JSON readers refuse).

Such a file is rejected rather than stored, though images are stored by content hash: its name would
still appear in the reject lists, duplicate groups and label conflicts, and a name nobody can type
back cannot be fixed in a list file either. Rejecting it, under a printable rendering of the name,
is one rule for every source and keeps everything downstream plain text. A label folder whose name is
not UTF-8 cannot name a class (labels end up in labels.json and the served model), so its images are
rejected too. The rest of the dataset is ingested as usual.

`printable` is the rendering: the undecodable bytes as `\\xNN` escapes, the rest unchanged.
"""

from __future__ import annotations

INVALID_NAME = "invalid-name"
INVALID_LABEL = "invalid-label"


def is_text(name: str) -> bool:
    """Whether `name` is valid Unicode text (no lone surrogates), i.e. can be written as UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(name: str) -> str:
    """`name` if it is text; otherwise the same name with each undecodable byte shown as `\\xNN`
    (other lone surrogates, which no file system name decodes to, as `\\udNNN`). Always encodable."""
    if is_text(name):
        return name
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def name_problem(label: str, name: str) -> str:
    """Why the file `name` in the label folder `label` cannot be used because of a name, or ''."""
    if not is_text(label):
        return (f"{INVALID_LABEL}: label folder name is not valid UTF-8 (undecodable bytes shown as \\xNN); "
                f"a label must be text: rename the folder")
    if not is_text(name):
        return f"{INVALID_NAME}: file name is not valid UTF-8 (undecodable bytes shown as \\xNN); rename the file"
    return ""
