"""The bundled example function: greets whoever the event names."""

from typing import Any


def handler(event: Any, context: Any) -> dict[str, str]:
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {
        "message": f"hello, {name}",
        "request_id": context.request_id,
        "function": context.function_name,
    }
