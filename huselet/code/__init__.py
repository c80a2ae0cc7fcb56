"""The node's package cache: function code resolved to leased, mapped images.

- :mod:`~huselet.code.codecache`: the cache as one daemon component, and its admin commands;
- :mod:`~huselet.code.packages`: each function's code resolved to a leased image;
- :mod:`~huselet.code.images`: what an instance gets for its code, and caller-safe failures;
- :mod:`~huselet.code.origins`: image files named by path, read as origins;
- :mod:`~huselet.code.nativetrees`: leased images' native files, extracted once;
- :mod:`~huselet.code.usage`: the package manager's usage records, events and ``ctl cache``;
- :mod:`~huselet.code.packing`: source directories packed into images once;
- :mod:`~huselet.code.prefetch`: fetching images before a request needs them;
- :mod:`~huselet.code.publish`: the watched publish directory;
- :mod:`~huselet.code.scrub`: background re-verification of installed images.

The image format, store and importer themselves live in the top-level
:mod:`cache` package, which never imports the daemon.
"""
