"""Sandbox mechanics that run *inside* sandbox processes (zygotes and instances).

Everything here is standard library + ctypes only — no trio, no daemon
modules — because a zygote imports it before it imports function code, and
every module it imports is memory that each forked instance maps.

- :mod:`huselet.sandbox.linux`: thin ctypes wrappers for the Linux calls
  Python lacks (unshare, mount, pivot_root, clone with flags, capset, ...).
- :mod:`huselet.sandbox.seccomp`: a classic-BPF syscall filter builder.
- :mod:`huselet.sandbox.rootfs`: the read-only filesystem view of a function.
- :mod:`huselet.sandbox.confine`: the per-function and per-instance steps.
- :mod:`huselet.sandbox.zygote`: the zygote process main loop.
"""
