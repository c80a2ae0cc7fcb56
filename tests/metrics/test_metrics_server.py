"""The ``[metrics] http`` listener over real sockets: GET /metrics and nothing else."""

from __future__ import annotations

import httpx
import trio

from huselet.config import TcpAddress
from huselet.listen import ListenError
from huselet.metrics.server import MetricsServer


def render(accept: str | None) -> tuple[bytes, str]:
    kind = "openmetrics" if accept and "openmetrics" in accept else "text"
    return f"# {kind}\nup 1\n".encode(), f"text/{kind}"


async def test_serves_metrics_and_refuses_other_paths_and_methods() -> None:
    server = MetricsServer(TcpAddress("127.0.0.1", 0), render)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        url = f"http://{address}"

        def requests() -> list[httpx.Response]:
            with httpx.Client(timeout=10) as client:
                return [
                    client.get(f"{url}/metrics"),
                    client.get(
                        f"{url}/metrics", headers={"Accept": "application/openmetrics-text"}
                    ),
                    client.head(f"{url}/metrics"),
                    client.get(f"{url}/other"),
                    client.post(f"{url}/metrics"),
                ]

        plain, openmetrics, head, other, post = await trio.to_thread.run_sync(requests)
        nursery.cancel_scope.cancel()
    assert (plain.status_code, plain.text, plain.headers["content-type"]) == (
        200,
        "# text\nup 1\n",
        "text/text",
    )
    assert openmetrics.text.startswith("# openmetrics")
    assert head.status_code == 200 and head.content == b""
    assert other.status_code == 404 and post.status_code == 405
    assert server.scrapes == 3


async def test_a_taken_port_is_named_in_the_error() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = MetricsServer(TcpAddress("127.0.0.1", port), render)
        try:
            await server.run()
        except ListenError as exc:
            assert f"metrics.http 127.0.0.1:{port}" in str(exc)
        else:
            raise AssertionError("bound a taken port")
