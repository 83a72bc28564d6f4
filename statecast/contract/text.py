"""Text cleaning shared by training and serving: ONE definition, like the calendar features.

The shipped text models were trained on reviews whose HTML line breaks and stray tags were
replaced by spaces and whose entities were unescaped; the text route applies the same
cleaning (route option ``clean=html``, the default) so a raw review scores as it did in
evaluation.
"""

from __future__ import annotations

import html
import re

_BREAK = re.compile(r"<\s*br\s*/?\s*>", re.IGNORECASE)
# Bounded tag length: the pattern cannot scan far past a stray "<".
_TAG = re.compile(r"<[^>]{0,40}>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Line breaks and stray tags become spaces; HTML entities are unescaped."""
    text = _BREAK.sub(" ", text)
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", html.unescape(text)).strip()
