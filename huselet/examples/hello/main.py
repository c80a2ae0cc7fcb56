"""The bundled example function: greets whoever the event names."""


def handler(event, context):
    name = event.get("name", "world") if isinstance(event, dict) else "world"
    return {
        "message": f"hello, {name}",
        "request_id": context.request_id,
        "function": context.function_name,
    }
