"""The package's public surface: every re-exported name resolves, lazily."""

from __future__ import annotations

from cache_testkit import REPO_ROOT, run_python

import cache


def test_every_exported_name_resolves() -> None:
    for name in cache.__all__:
        assert getattr(cache, name) is not None, name
    assert issubclass(cache.DiskFull, cache.CacheFull)
    assert issubclass(cache.DigestMismatch, cache.CorruptImage)
    errors = ["BuildError", "CacheFull", "CorruptImage", "DigestMismatch", "DiskFull",
              "FetchError", "ImageNotFound", "ImageTooLarge", "TransientFetchError",
              "UnsupportedImage"]  # fmt: skip
    for name in errors:
        assert issubclass(getattr(cache, name), cache.CacheError), name


def test_importing_the_package_loads_no_submodule_it_does_not_need() -> None:
    result = run_python(
        "import sys, cache; print(sorted(m for m in sys.modules if m.startswith('cache')))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['cache', 'cache.errors']"
    assert REPO_ROOT.joinpath("cache", "FORMAT.md").is_file()


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        cache.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
