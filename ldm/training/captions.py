"""Caption sampling for training: the plain caption, or CLDR-style keywords instead, with an optional style word.

A captions.jsonl row may carry `keywords` (["apple", "fruit", "red"]) and a `style` ("twemoji").
Each time an image is drawn, its caption is its name, or with probability `keyword_prob` one to
`max_keywords` of its keywords ("fruit, red"); then, with probability `style_prob`, ", <style> style"
is appended. The style word is dropped often, so plain prompts work and a user can still ask for a
style. The choice is a function of the stream position, so a resumed run draws the same captions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class CaptionSampling:
    keyword_prob: float = 0.0
    max_keywords: int = 3
    style_prob: float = 0.0

    @property
    def active(self) -> bool:
        return self.keyword_prob > 0 or self.style_prob > 0

    def __call__(self, caption: str, extra: dict, rng: random.Random) -> str:
        keywords = [k for k in extra.get("keywords", ()) if isinstance(k, str) and k.strip()]
        if keywords and rng.random() < self.keyword_prob:
            caption = ", ".join(rng.sample(keywords, rng.randint(1, min(self.max_keywords, len(keywords)))))
        style = extra.get("style")
        if style and rng.random() < self.style_prob:
            caption = f"{caption}, {style} style"
        return caption


def styled(caption: str, style: str | None) -> str:
    """The prompt that asks for a style the way training wrote it ("red apple, twemoji style")."""
    return f"{caption}, {style} style" if style else caption
