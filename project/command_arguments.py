"""``type=`` validators of the management commands' arguments: a bad value is argparse's usage
error naming the argument, never a traceback."""

from __future__ import annotations

import argparse
import math
from datetime import timedelta

from django.utils import timezone


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_days(text: str) -> float:
    """A number of days to go back from now (fractions allowed), such as ``--older-than``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of days, got {text!r}")
    try:
        timezone.now() - timedelta(days=value)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} days reaches before the year 1") from None
    return value
