"""Demo agents and pipelines that ship with the platform: deterministic, no network."""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

from rest_framework import serializers

from executions.registry import Step, agent, pipeline, step
from executions.runtime import TargetFailed

# --- agents ----------------------------------------------------------------------------------------


@agent("echo", description="Returns its inputs unchanged (any JSON object). The no-op of benchmarks.")
def echo(inputs: dict, ctx) -> dict:
    return inputs


class SleepInputs(serializers.Serializer):
    seconds = serializers.FloatField(
        min_value=0, max_value=86400, help_text="How long to sleep, in seconds."
    )


@agent("sleep", inputs=SleepInputs)
def sleep(inputs: dict, ctx) -> dict:
    """Sleeps for `seconds`, reporting progress as time passes; stops promptly when cancelled."""
    seconds = inputs["seconds"]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        ctx.progress(percentage=100.0 * elapsed / seconds, step_name="sleeping")
        ctx.sleep(min(0.1, seconds - elapsed))
    return {"slept": seconds}


@agent("wait", inputs=SleepInputs)
async def wait(inputs: dict, ctx) -> dict:
    """Awaits `seconds` (a stand-in for a model API call), reporting progress every second: an
    `async def` agent, so a worker process runs many at once; a cancel stops it at once."""
    seconds = inputs["seconds"]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        await ctx.progress(percentage=100.0 * elapsed / seconds, step_name="waiting")
        await ctx.sleep(min(1.0, seconds - elapsed))
    return {"waited": seconds}


class FailInputs(serializers.Serializer):
    message = serializers.CharField(
        required=False, default="failed on purpose", help_text="The error message to fail with."
    )


@agent("fail", inputs=FailInputs)
def fail(inputs: dict, ctx) -> dict:
    """Fails at once with `message`, to see what failures look like."""
    raise TargetFailed(inputs["message"])


# --- text helpers shared by `summarize` and `text_report` ------------------------------------------

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves""".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD = re.compile(r"[A-Za-z0-9']+")


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(normalize_text(text)) if s.strip()]


def content_words(text: str) -> list[str]:
    return [w for w in (m.group().lower().strip("'") for m in _WORD.finditer(text)) if w and w not in STOPWORDS]


def summarize_sentences(sentences: list[str], max_sentences: int) -> list[dict[str, Any]]:
    """Extractive summary: score sentences by the normalised frequency of their content words.

    A sentence's score is the mean weight of its content words, where a word's weight is its
    count divided by the highest count. The best ``max_sentences`` are kept in text order.
    """
    frequencies = Counter(w for s in sentences for w in content_words(s))
    if not frequencies:
        return [{"index": i, "sentence": s, "score": 0.0} for i, s in enumerate(sentences[:max_sentences])]
    top = max(frequencies.values())
    scored: list[dict[str, Any]] = []
    for index, sentence in enumerate(sentences):
        words = content_words(sentence)
        score = sum(frequencies[w] / top for w in words) / len(words) if words else 0.0
        scored.append({"index": index, "sentence": sentence, "score": round(score, 4)})
    best = sorted(scored, key=lambda item: (-item["score"], item["index"]))[:max_sentences]
    return sorted(best, key=lambda item: item["index"])


class SummarizeInputs(serializers.Serializer):
    text = serializers.CharField(trim_whitespace=False, help_text="The text to summarize.")
    max_sentences = serializers.IntegerField(
        required=False, default=3, min_value=1, max_value=100,
        help_text="How many sentences the summary keeps.",
    )


@agent("summarize", inputs=SummarizeInputs)
def summarize(inputs: dict, ctx) -> dict:
    """Extractive summary of `text` by word-frequency scoring, keeping `max_sentences` sentences."""
    sentences = split_sentences(inputs["text"])
    ctx.progress(current_step=1, total_steps=2, step_name="scoring sentences")
    chosen = summarize_sentences(sentences, inputs["max_sentences"])
    ctx.progress(current_step=2, total_steps=2, step_name="assembling summary")
    return {
        "summary": " ".join(item["sentence"] for item in chosen),
        "sentences": [item["sentence"] for item in chosen],
        "sentence_count": len(sentences),
    }


# --- pipelines ---------------------------------------------------------------------------------------


class TextReportInputs(serializers.Serializer):
    text = serializers.CharField(trim_whitespace=False, help_text="The text to report on.")


def normalize(data: dict, ctx) -> dict:
    return {"text": normalize_text(data["text"])}


@step("split sentences")
def _split_sentences(data: dict, ctx) -> dict:
    return {**data, "sentences": split_sentences(data["text"])}


def word_statistics(data: dict, ctx) -> dict:
    words = [m.group().lower() for m in _WORD.finditer(data["text"])]
    content = content_words(data["text"])
    sentences = data["sentences"]
    statistics = {
        "characters": len(data["text"]),
        "words": len(words),
        "unique_words": len(set(words)),
        "sentences": len(sentences),
        "average_sentence_words": round(len(words) / len(sentences), 2) if sentences else 0.0,
        "top_words": [[w, c] for w, c in Counter(content).most_common(10)],
    }
    return {**data, "statistics": statistics}


@step("summarize")
def _summarize(data: dict, ctx) -> dict:
    chosen = summarize_sentences(data["sentences"], 3)
    return {**data, "summary": [item["sentence"] for item in chosen]}


def render_report(data: dict, ctx) -> dict:
    stats = data["statistics"]
    top_words = ", ".join(f"{w} ({c})" for w, c in stats["top_words"]) or "none"
    lines = [
        "# Text report",
        "",
        f"- Characters: {stats['characters']}",
        f"- Words: {stats['words']} ({stats['unique_words']} unique)",
        f"- Sentences: {stats['sentences']} (average {stats['average_sentence_words']} words)",
        f"- Top words: {top_words}",
        "",
        "## Summary",
        "",
        *[f"> {sentence}" for sentence in data["summary"]],
    ]
    return {"report": "\n".join(lines), "statistics": stats, "summary": data["summary"]}


pipeline(
    "text_report",
    steps=[normalize, _split_sentences, word_statistics, _summarize, render_report],
    inputs=TextReportInputs,
    description="Normalizes a text, splits its sentences, counts words, summarizes and renders a Markdown report.",
)


class CountdownInputs(serializers.Serializer):
    steps = serializers.IntegerField(min_value=1, max_value=1000, help_text="Number of steps.")
    step_seconds = serializers.FloatField(
        required=False, default=1.0, min_value=0, max_value=3600, help_text="Seconds each step takes."
    )


@pipeline("countdown", inputs=CountdownInputs, steps_description=["tick (repeated `steps` times)"])
def countdown(inputs: dict) -> list[Step]:
    """Counts down `steps` steps of `step_seconds` each: a pipeline to watch progress move."""
    total = inputs["steps"]

    def tick_factory(remaining: int):
        def tick(data: dict, ctx) -> dict:
            ctx.sleep(inputs["step_seconds"])
            return {"remaining": remaining - 1, "steps": total}

        return tick

    return [Step(name=f"tick {total - i}", function=tick_factory(total - i)) for i in range(total)]
