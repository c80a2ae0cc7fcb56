"""``[[functions]]``: one function's entry point, code source, layers and limits.

Also :func:`parse_function_spec`, the same validation for a function that
arrives at runtime (a scheduler's deploy command) rather than in the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from huselet.config.auth import TENANT_NAME, parse_rate
from huselet.config.cache import origin_url
from huselet.config.host import host_memory_mb
from huselet.config.limits import check_structure
from huselet.config.settings import (
    IMAGE_ONLY_CWD,
    CacheSettings,
    Config,
    FunctionSettings,
    GatewaySettings,
    LayerSettings,
)
from huselet.config.table import ConfigTable
from huselet.errors import ConfigError
from protocol.link import EntryKind

FUNCTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HANDLER = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$"
)
DIGEST = re.compile(r"^[0-9a-f]{64}$")
CODE_SOURCES = ("package", "image", "digest")
MAX_LAYERS = 8
APP_KINDS = (EntryKind.WSGI.value, EntryKind.ASGI.value)
EVENT_FORMATS = ("default", "http")


def parse_function_spec(
    raw: Mapping[str, Any], config: Config, *, known_runtimes: Iterable[str], where: str
) -> FunctionSettings:
    """One ``[[functions]]`` table that arrived at runtime (a scheduler's deploy command).

    Validated exactly like the config file's; errors name ``where`` as the key path.
    Relative paths resolve against ``node.state_dir``.
    """
    check_structure(raw, where)
    t = ConfigTable(raw, where, config.node.state_dir)
    return parse_function(t, config.gateway, frozenset(known_runtimes), config.cache)


def parse_function(
    ft: ConfigTable,
    gateway: GatewaySettings,
    known_runtimes: frozenset[str],
    cache: CacheSettings | None = None,
) -> FunctionSettings:
    name = ft.string(
        "name", pattern=FUNCTION_NAME, pattern_help="lowercase letters, digits, - and _, at most 63"
    )
    handler, spec_key, kind = _parse_entry(ft)
    module = handler.split(":", 1)[0]
    package, image, digest, origin = _parse_code(
        ft, module, cache or CacheSettings(), spec_key=spec_key
    )
    runtime = ft.choice("runtime", tuple(sorted(known_runtimes)), default="process")
    max_instances = ft.positive_int("max_instances", default=8)
    min_instances = ft.non_negative_int("min_instances", default=0)
    if min_instances > max_instances:
        raise ConfigError(
            ft.key("min_instances"), f"{min_instances} exceeds max_instances {max_instances}"
        )
    env_t = ft.table("env")
    env = {k: env_t.string(k) for k in env_t.key_names()}
    fn = FunctionSettings(
        name=name,
        package=package,
        handler=handler,
        runtime=runtime,
        memory_mb=ft.positive_int(
            "memory_mb",
            default=256,
            minimum=16,
            maximum=host_memory_mb(),
            maximum_help="this host's memory",
        ),
        timeout_ms=ft.positive_int("timeout_ms", default=30_000),
        max_instances=max_instances,
        min_instances=min_instances,
        idle_timeout_ms=ft.positive_int("idle_timeout_ms", default=60_000),
        start_timeout_ms=ft.positive_int("start_timeout_ms", default=10_000),
        instance_mode=ft.choice("instance_mode", ("reuse", "single"), default="reuse"),
        max_queue=ft.positive_int("max_queue", default=gateway.queue_per_function),
        env=env,
        image=image,
        digest=digest,
        origin=origin,
        idempotent=ft.boolean("idempotent", default=False),
        kind=kind,
        tenant=(
            ft.string("tenant", pattern=TENANT_NAME, pattern_help="a tenant name")
            if ft.optional("tenant") is not None
            else None
        ),
        rate=parse_rate(ft),
        max_concurrent=(
            ft.positive_int("max_concurrent") if ft.optional("max_concurrent") is not None else None
        ),
        layers=_parse_layers(ft, cache or CacheSettings()),
    )
    ft.finish()
    return fn


def _parse_layers(ft: ConfigTable, cache: CacheSettings) -> tuple[LayerSettings, ...]:
    tables = ft.table_list("layers")
    if len(tables) > MAX_LAYERS:
        raise ConfigError(ft.key("layers"), f"at most {MAX_LAYERS} layers, got {len(tables)}")
    layers = []
    for lt in tables:
        image = lt.optional_path("image")
        digest = (
            lt.string("digest", pattern=DIGEST, pattern_help="64 lowercase hex digits (sha256)")
            if "digest" in lt.raw
            else None
        )
        origin = origin_url(lt, "origin") if "origin" in lt.raw else None
        if image is None and digest is None:
            raise ConfigError(lt.key("image"), "a layer needs image, or digest (+ origin)")
        if image is not None and origin is not None:
            raise ConfigError(lt.key("origin"), "only allowed with digest, not with image")
        if image is None and origin is None and cache.default_origin is None:
            raise ConfigError(
                lt.key("origin"), "required with digest when cache.default_origin is not set"
            )
        if image is not None and not image.is_file():
            raise ConfigError(lt.key("image"), f"layer image {image} does not exist")
        lt.finish()
        layers.append(LayerSettings(image.resolve() if image else None, digest, origin))
    return tuple(layers)


def _parse_entry(ft: ConfigTable) -> tuple[str, str, EntryKind]:
    """``handler`` [+ ``events``], or ``app`` + ``kind``: (spec, its key, kind)."""
    if "app" in ft.raw:
        if "handler" in ft.raw:
            raise ConfigError(ft.key("handler"), "conflicts with app; set exactly one")
        if "events" in ft.raw:
            raise ConfigError(
                ft.key("events"), "only for handler functions; an app always gets HTTP requests"
            )
        app = ft.string("app", pattern=HANDLER, pattern_help='"module:attribute"')
        if "kind" not in ft.raw:
            raise ConfigError(ft.key("kind"), 'required with app: "wsgi" or "asgi"')
        return app, "app", EntryKind(ft.choice("kind", APP_KINDS, default="wsgi"))
    if "kind" in ft.raw:
        kind = ft.choice("kind", (EntryKind.HANDLER.value, *APP_KINDS), default="handler")
        if kind != EntryKind.HANDLER.value:
            raise ConfigError(ft.key("kind"), f'kind = "{kind}" needs app = "module:attribute"')
    handler = ft.string("handler", pattern=HANDLER, pattern_help='"module:function"')
    events = ft.choice("events", EVENT_FORMATS, default="default")
    return handler, "handler", EntryKind.HTTP if events == "http" else EntryKind.HANDLER


def _parse_code(
    ft: ConfigTable, module: str, cache: CacheSettings, *, spec_key: str = "handler"
) -> tuple[Path, Path | None, str | None, str | None]:
    """Exactly one of ``package``, ``image`` or ``digest`` (+ ``origin``) names the code.

    Returns (working directory, image, digest, origin).
    """
    given = [key for key in CODE_SOURCES if key in ft.raw]
    if not given:
        raise ConfigError(
            ft.key("package"),
            "required key is missing (name the code with package, image, or digest + origin)",
        )
    if len(given) > 1:
        raise ConfigError(
            ft.key(given[1]),
            f"conflicts with {given[0]}; set exactly one of package, image or digest",
        )
    if "origin" in ft.raw and given[0] != "digest":
        raise ConfigError(ft.key("origin"), "only allowed together with digest")
    rel = Path(*module.split("."))
    if given[0] == "package":
        package = ft.path("package")
        try:
            if not package.is_dir():
                raise ConfigError(ft.key("package"), f"package directory {package} does not exist")
            found = (package / rel).with_suffix(".py").is_file() or (
                package / rel / "__init__.py"
            ).is_file()
            resolved = package.resolve()
        except OSError as exc:  # ENAMETOOLONG from a long handler module, EACCES…
            raise ConfigError(
                ft.key(spec_key), f"cannot look for module {module!r}: {exc}"
            ) from None
        if not found:
            raise ConfigError(ft.key(spec_key), f"module {module!r} not found in package {package}")
        return resolved, None, None, None
    if given[0] == "image":
        image = ft.path("image").resolve()
        _check_image(ft, image, module, rel, spec_key)
        return IMAGE_ONLY_CWD, image, None, None
    digest = ft.string("digest", pattern=DIGEST, pattern_help="64 lowercase hex digits (sha256)")
    if "origin" in ft.raw:
        origin = origin_url(ft, "origin")
    elif cache.default_origin is not None:
        origin = None
    else:
        raise ConfigError(
            ft.key("origin"), "required with digest when cache.default_origin is not set"
        )
    return IMAGE_ONLY_CWD, None, digest, origin


def _check_image(ft: ConfigTable, image: Path, module: str, rel: Path, spec_key: str) -> None:
    """Read the image's header and index (not its data: the store verifies that).

    With ``pread``, never a mapping, and never blocking: a FIFO is refused at
    once, a file truncated meanwhile is an error rather than a SIGBUS.
    """
    from cache.errors import CacheError
    from cache.validate import inspect_image

    try:
        index = inspect_image(image, verify=False)
    except FileNotFoundError:
        raise ConfigError(ft.key("image"), f"image {image} does not exist") from None
    except OSError as exc:
        raise ConfigError(ft.key("image"), f"cannot read image {image}: {exc.strerror}") from None
    except CacheError as exc:
        raise ConfigError(ft.key("image"), f"{image} is not a usable image: {exc}") from None
    found = index.is_file(f"{rel.as_posix()}.py") or index.is_file(f"{rel.as_posix()}/__init__.py")
    if not found:
        raise ConfigError(ft.key(spec_key), f"module {module!r} not found in image {image}")
