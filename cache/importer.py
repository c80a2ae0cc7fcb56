"""Import a function's modules straight from a mapped package image.

:func:`install_image_importer` puts an :class:`ImageFinder` on
``sys.meta_path`` (just before the standard ``PathFinder``, where
``sys.path[0]`` would sit). It serves top-level modules, packages,
submodules and relative imports from an open :class:`~cache.reader.ImageReader`:

- **Code** comes from the stored unchecked-hash pyc when this interpreter made
  it (same magic and cache tag, no ``-O``), else the source is compiled from
  the map. No stat, no mtime, no file copy.
- **Paths** are virtual, zipimport-style: ``<image file>/<image path>``, e.g.
  ``/var/lib/huselet/images/<digest>.hlimg/pkg/mod.py`` is ``__file__`` of
  ``pkg.mod`` and ``/…/<digest>.hlimg/pkg`` is in ``pkg.__path__``. They do
  not exist on disk; ``linecache`` and tracebacks get source through
  ``get_source``, and ``importlib.resources`` through ``get_resource_reader``.
- **Native code** cannot load from memory: the image's non-Python files are
  extracted once, with their layout, into ``extract_root/<image digest>/``
  (:mod:`cache.native`), and virtual paths are then rooted *there*, so an
  extension's ``$ORIGIN`` RPATH, a ``ctypes`` load next to ``__file__`` and a
  data file opened by path all find real files. Extensions load through the
  standard ``ExtensionFileLoader``.
- **Lookup order** is CPython's ``FileFinder``'s: a package (``__init__``,
  extension before source), then a module (extension before source), then a
  namespace portion (a directory without ``__init__``) — so pydantic-core's
  ``_pydantic_core/`` stub directory never hides ``_pydantic_core.*.so``.
  Top-level namespace portions yield to a regular package of that name
  elsewhere on ``sys.path``, so a stray data directory never shadows an
  installed distribution.
- **Distribution metadata** (``*.dist-info`` in the extracted tree) is found
  by ``importlib.metadata`` through :meth:`ImageFinder.find_distributions`.

This module runs in every function instance at start-up, so it imports only
the standard library's already-loaded core and :mod:`cache.reader`.
"""

from __future__ import annotations

import _imp
import importlib._bootstrap_external
import marshal
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder
from types import CodeType

from cache import format as fmt

# Imported eagerly, not when a finder is made: a zygote imports this module
# before its sandbox hides the host's copy of the cache package.
from cache.native import ensure_native_tree, native_tree_path
from cache.reader import MAGIC_NUMBER, Entry, ImageReader

TYPE_CHECKING = False  # see cache/format.py: avoids importing typing at start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import ModuleType

    from cache.resources import ImageResourceReader

_PYC_HEADER_SIZE = 16
# Where the packer installs a package's requirements.txt inside its image: a
# second import root after the function's own code (not an importable name).
DEPS_DIR = ".huselet-deps"
# FileFinder's loader order: extension modules, then source.
_SUFFIXES = (*EXTENSION_SUFFIXES, ".py")
_PYC_FLAGS_UNCHECKED_HASH = 0b01


class ImageFinder:
    """A ``sys.meta_path`` finder over one image. Make one with :func:`install_image_importer`."""

    def __init__(
        self, reader: ImageReader, *, prefix: str = "", extract_root: str | None = None
    ) -> None:
        normalised = _normalise_prefix(prefix)
        if normalised and not reader.is_dir(normalised):
            raise ImportError(f"prefix {prefix!r} is not a directory in image {reader.digest}")
        self.reader = reader
        self.prefix = normalised
        self.extract_root = extract_root
        # Virtual paths start here: the image file, or the image's native tree
        # once it has one (see the module docstring), so __file__ sits next to
        # the real extension and data files.
        self.image_root = os.path.abspath(reader.path)
        self.native_root: str | None = None
        if extract_root is not None:
            tree = native_tree_path(extract_root, reader.digest)
            try:
                self.native_root = ensure_native_tree(reader, extract_root)
            except OSError as exc:
                # A read-only extract root (a sandbox) whose tree the daemon did
                # not prepare: only images with native code need one.
                if os.path.isdir(tree):
                    self.native_root = tree
                else:
                    self._native_error: str = f"cannot extract native files to {tree}: {exc}"
            if self.native_root is not None:
                self.image_root = os.path.abspath(self.native_root)
        self.path_entry = self.virtual_path(normalised)  # what sys.path[0] would be

    # -- the finder protocol -------------------------------------------------------

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if path is None:
            directories = [self.prefix]
        else:
            directories = [d for d in map(self.image_dir_of, path) if d is not None]
            if not directories:
                return None
        name = fullname.rpartition(".")[2]
        namespace_portions: list[str] = []
        for directory in directories:
            spec = self._find_in(directory, fullname, name)
            if spec is None:
                continue
            if spec.loader is not None:
                return spec
            namespace_portions.extend(spec.submodule_search_locations or ())
        if not namespace_portions:
            return None
        if path is None:
            # PEP 420: a regular package anywhere on sys.path beats a namespace
            # portion; the image stands in front of sys.path, so merge after ours.
            elsewhere = PathFinder.find_spec(fullname)
            if elsewhere is not None:
                if elsewhere.loader is not None:
                    return elsewhere
                namespace_portions.extend(elsewhere.submodule_search_locations or ())
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = namespace_portions
        return spec

    def invalidate_caches(self) -> None:
        """Nothing to do: an image never changes under its name."""

    def find_distributions(self, context: object = None) -> Iterable[object]:
        """``importlib.metadata`` hook: the ``*.dist-info`` of the image's extracted tree."""
        if self.native_root is None:
            return iter(())
        from importlib.metadata import DistributionFinder, MetadataPathFinder

        name = getattr(context, "name", None)
        scoped = DistributionFinder.Context(name=name, path=[self.path_entry])
        return MetadataPathFinder.find_distributions(scoped)

    def path_hook(self, path: str) -> ImagePathEntryFinder:
        """``sys.path_hooks`` entry claiming this image's virtual directories.

        Without it ``PathFinder`` would offer those paths to ``zipimport`` (which
        reads the image's tail looking for a zip directory) on every miss.
        """
        directory = self.image_dir_of(path)
        if directory is None:
            raise ImportError(f"{path!r} is not inside image {self.reader.digest}")
        return ImagePathEntryFinder(self, directory)

    # -- paths ---------------------------------------------------------------------

    def virtual_path(self, image_path: str) -> str:
        return f"{self.image_root}/{image_path}" if image_path else self.image_root

    def image_dir_of(self, virtual: str) -> str | None:
        """The image directory behind a virtual path, or ``None`` if not ours."""
        if virtual == self.image_root:
            return ""
        if not virtual.startswith(self.image_root + "/"):
            return None
        directory = virtual[len(self.image_root) + 1 :]
        return directory if self.reader.is_dir(directory) else None

    # -- lookup --------------------------------------------------------------------

    def _find_in(self, directory: str, fullname: str, name: str) -> ModuleSpec | None:
        # CPython's FileFinder order exactly: package, then module, then namespace
        # portion; within each, extension modules before source.
        base = f"{directory}/{name}" if directory else name
        reader = self.reader
        is_dir = reader.is_dir(base)
        if is_dir:
            for suffix in _SUFFIXES:
                init = reader.lookup(f"{base}/__init__{suffix}")
                if init is not None and init.is_file:
                    return self._spec(fullname, init, package_dir=base)
        for suffix in _SUFFIXES:
            entry = reader.lookup(base + suffix)
            if entry is not None and entry.is_file:
                return self._spec(fullname, entry, package_dir=None)
        if is_dir:
            namespace = ModuleSpec(fullname, None, is_package=True)
            namespace.submodule_search_locations = [self.virtual_path(base)]
            return namespace
        return None

    def _spec(self, fullname: str, entry: Entry, package_dir: str | None) -> ModuleSpec:
        if entry.path.endswith(".py"):
            loader = ImageModuleLoader(self, fullname, entry, package_dir is not None)
            # Duck-typed loader: subclassing importlib.abc.Loader would import
            # typing at instance start; the import system checks no base class.
            spec = ModuleSpec(
                fullname,
                loader,  # type: ignore[arg-type]
                origin=self.virtual_path(entry.path),
            )
        else:
            extracted = self._extract(fullname, entry)
            spec = ModuleSpec(fullname, ExtensionFileLoader(fullname, extracted), origin=extracted)
        spec.has_location = True
        if package_dir is not None:
            spec.submodule_search_locations = [self.virtual_path(package_dir)]
        return spec

    def _extract(self, fullname: str, entry: Entry) -> str:
        if self.extract_root is None:
            raise ImportError(
                f"extension module {fullname} ({entry.path}) needs an extract_root "
                f"to be loaded from image {self.reader.digest}",
                name=fullname,
            )
        if self.native_root is None:
            raise ImportError(
                f"extension module {fullname} ({entry.path}): "
                f"{getattr(self, '_native_error', 'the image has no native tree')}",
                name=fullname,
            )
        return os.path.join(self.native_root, *entry.path.split("/"))


class ImagePathEntryFinder:
    """The path-entry finder ``ImageFinder.path_hook`` hands to ``PathFinder``."""

    def __init__(self, finder: ImageFinder, directory: str) -> None:
        self._finder = finder
        self._directory = directory

    def find_spec(self, fullname: str, target: ModuleType | None = None) -> ModuleSpec | None:
        name = fullname.rpartition(".")[2]
        return self._finder._find_in(self._directory, fullname, name)

    def invalidate_caches(self) -> None:
        pass


class ImageModuleLoader:
    """Loads one Python module (source or stored bytecode) from the mapping."""

    def __init__(self, finder: ImageFinder, fullname: str, entry: Entry, is_package: bool) -> None:
        self._finder = finder
        self.name = fullname
        self._entry = entry
        self._is_package = is_package
        self.path = finder.virtual_path(entry.path)

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object is what we want

    def exec_module(self, module: ModuleType) -> None:
        code = self.get_code(module.__name__)
        exec(code, module.__dict__)

    def is_package(self, fullname: str) -> bool:
        return self._is_package

    def get_filename(self, fullname: str | None = None) -> str:
        return self.path

    def get_code(self, fullname: str) -> CodeType:
        reader = self._reader()
        code = self._stored_code(reader) if sys.flags.optimize == 0 else None
        if code is None:
            source = bytes(reader.read_entry(self._entry))
            code = compile(source, self.path, "exec", dont_inherit=True)
        return code

    def get_source(self, fullname: str) -> str:
        data = bytes(self._reader().read_entry(self._entry))
        return importlib._bootstrap_external.decode_source(data)

    def get_data(self, path: str) -> bytes:
        """Bytes of a file given by virtual path (what ``pkgutil.get_data`` asks for)."""
        finder = self._finder
        if not path.startswith(finder.image_root + "/"):
            raise FileNotFoundError(f"{path!r} is not inside image {finder.reader.digest}")
        return bytes(self._reader().read(path[len(finder.image_root) + 1 :]))

    def get_resource_reader(self, fullname: str) -> ImageResourceReader:
        from cache.resources import ImageResourceReader  # lazily: pulls in typing

        directory = self._entry.path.rpartition("/")[0]
        return ImageResourceReader(self._reader(), directory)

    def _reader(self) -> ImageReader:
        reader = self._finder.reader
        if reader.closed:
            raise ImportError(f"image {reader.digest} is closed", name=self.name)
        return reader

    def _stored_code(self, reader: ImageReader) -> CodeType | None:
        """The stored pyc's code object, or ``None`` to fall back to the source."""
        if not reader.bytecode_usable:
            return None
        pyc_path = fmt.pyc_path_for(self._entry.path, sys.implementation.cache_tag or "")
        entry = reader.lookup(pyc_path) if pyc_path else None
        if entry is None or not entry.is_file or entry.size <= _PYC_HEADER_SIZE:
            return None
        data = reader.read_entry(entry)
        flags = int.from_bytes(data[4:8], "little")
        if data[:4] != MAGIC_NUMBER or flags != _PYC_FLAGS_UNCHECKED_HASH:
            return None
        code = marshal.loads(data[_PYC_HEADER_SIZE:])
        if not isinstance(code, CodeType):
            return None  # a pyc holding something else is not ours to run
        # The pyc was compiled with the image-relative name; give tracebacks the
        # virtual path, exactly as CPython does for a pyc that moved.
        _imp._fix_co_filename(code, self.path)  # type: ignore[attr-defined]
        return code


def install_image_importer(
    reader: ImageReader, *, prefix: str = "", extract_root: str | os.PathLike[str] | None = None
) -> ImageFinder:
    """Serve imports from ``reader`` until :func:`uninstall_image_importer`.

    ``prefix`` is the directory inside the image that acts as the import root
    (like a ``sys.path`` entry: ``""`` for the image root, or e.g. ``"src"``).
    ``extract_root`` is a writable directory for native extensions; without
    it importing one raises ``ImportError``.
    """
    finder = ImageFinder(
        reader,
        prefix=prefix,
        extract_root=os.fspath(extract_root) if extract_root is not None else None,
    )
    try:
        position = sys.meta_path.index(PathFinder)
    except ValueError:
        position = len(sys.meta_path)
    sys.meta_path.insert(position, finder)
    sys.path_hooks.insert(0, finder.path_hook)
    return finder


def install_image_roots(
    reader: ImageReader, *, extract_root: str | os.PathLike[str] | None = None
) -> list[ImageFinder]:
    """Serve an image the way the packer laid it out: its root, then its installed requirements.

    The packer puts a package's ``requirements.txt`` under :data:`DEPS_DIR`;
    that import root comes right after the image's own code, as a ``pip
    install --target`` directory would on ``sys.path``.
    """
    finders = [install_image_importer(reader, extract_root=extract_root)]
    if reader.is_dir(DEPS_DIR):
        finders.append(install_image_importer(reader, prefix=DEPS_DIR, extract_root=extract_root))
    return finders


def uninstall_image_importer(finder: ImageFinder, *, remove_modules: bool = False) -> None:
    """Stop serving imports from ``finder``'s image.

    Modules already imported keep working only while the reader stays open;
    ``remove_modules=True`` also drops them from ``sys.modules``.
    """
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
    if finder.path_hook in sys.path_hooks:
        sys.path_hooks.remove(finder.path_hook)
    for path in [p for p in sys.path_importer_cache if finder.image_dir_of(p) is not None]:
        del sys.path_importer_cache[path]
    if remove_modules:
        for name, module in list(sys.modules.items()):
            loader = getattr(getattr(module, "__spec__", None), "loader", None)
            origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
            if (isinstance(loader, ImageModuleLoader) and loader._finder is finder) or (
                origin.startswith(finder.image_root + "/")
            ):
                del sys.modules[name]


def _normalise_prefix(prefix: str) -> str:
    parts = [p for p in prefix.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"prefix {prefix!r} leaves the image")
    return "/".join(parts)
