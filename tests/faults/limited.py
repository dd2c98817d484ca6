"""A target that may run only twice at once (``concurrency=2``), for the limit's load test."""

PAIR_LIMITED = "pair_limited"


def pair_limited(inputs, ctx):
    ctx.sleep(float(inputs.get("seconds", 0.05)))
    return {}
