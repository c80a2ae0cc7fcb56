"""A function that does nothing: what the benchmarks measure is the platform."""


def handler(event, context):
    return {"ok": True}
