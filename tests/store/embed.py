"""A deterministic embedding for the semantic search tests: how often each word of a small
vocabulary occurs in the text (plus a constant, so no vector is zero)."""

from __future__ import annotations

VOCABULARY = ("tea", "coffee", "cat", "dog", "python", "rust", "sun", "rain")
DIMS = len(VOCABULARY) + 1


def vector(text: str) -> list[float]:
    words = text.lower().replace(",", " ").replace(".", " ").replace('"', " ").split()
    return [float(words.count(word)) for word in VOCABULARY] + [0.1]


def embed(texts: list[str]) -> list[list[float]]:
    return [vector(text) for text in texts]
