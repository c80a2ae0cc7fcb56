"""A function that does nothing: what the benchmarks measure is the platform."""


def handler(event: object, context: object) -> dict[str, bool]:
    return {"ok": True}
