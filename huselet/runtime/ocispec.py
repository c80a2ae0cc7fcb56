"""The OCI runtime-spec ``config.json`` of one instance (see :mod:`huselet.runtime.oci`).

The same sandbox as ``fork`` and ``bwrap``, in OCI terms: read-only binds
(:mod:`huselet.sandbox.rootfs` decides which), private ``/tmp``, new
namespaces, the function's uid with no capabilities, ``noNewPrivileges``,
the seccomp deny list of :mod:`huselet.sandbox.seccomp` (as libseccomp rules)
and cgroup limits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from huselet.runtime.children import worker_env
from huselet.runtime.codeimage import code_ro_paths
from huselet.runtime.isolation import IsolationSettings
from huselet.sandbox import rootfs, seccomp

MiB = 1024 * 1024
# "cache": the image importer of workers whose code is a package image.
WORKER_PACKAGES = ("huselet", "protocol", "cache", "msgpack")
# Each CLONE_NEW* bit: libseccomp cannot say "any of these bits", so one rule per bit.
_CLONE_BITS = [1 << b for b in range(32) if seccomp.CLONE_NAMESPACE_FLAGS & (1 << b)]
MASKED = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def seccomp_rules() -> dict[str, Any]:
    syscalls: list[dict[str, Any]] = [
        {"names": sorted(seccomp.DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},  # ENOSYS
    ]
    for bit in _CLONE_BITS:
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 1,
                "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": syscalls,
    }


def container_config(
    spec: Any,
    *,
    rootfs: Path,
    uid: int,
    iso: IsolationSettings,
    cgroup_path: str | None,
    link_fd: int,
) -> dict[str, Any]:
    fn = spec.function
    env = worker_env(spec, link_fd=link_fd)
    extra = iso.ro_paths + code_ro_paths(spec.image)
    binds = rootfs_binds(str(fn.package), extra)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={iso.tmp_size_mb}m"],
        },
    ]
    for source in binds:
        mounts.append(
            {
                "destination": source,
                "type": "bind",
                "source": source,
                "options": ["rbind", "ro", "nosuid", "nodev"],
            }
        )
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if iso.network == "none":
        namespaces.append({"type": "network"})
    resources: dict[str, Any] = {
        "devices": [{"allow": False, "access": "rwm"}],
        "memory": {"limit": fn.memory_mb * MiB, "swap": fn.memory_mb * MiB},
        "pids": {"limit": iso.pids_max},
    }
    if iso.cpu_cores:
        resources["cpu"] = {"quota": int(iso.cpu_cores * 100_000), "period": 100_000}
    no_caps: dict[str, list[str]] = {
        k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")
    }
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        "maskedPaths": MASKED,
        "readonlyPaths": READONLY,
    }
    if cgroup_path is not None:
        linux["cgroupsPath"] = cgroup_path
    if iso.isolation and iso.seccomp:
        linux["seccomp"] = seccomp_rules()
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": uid, "additionalGids": []},
            "args": [sys.executable, "-I", "-B", "-u", "-m", "huselet.worker"],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": str(fn.package),
            "capabilities": no_caps,
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": iso.nofile, "soft": iso.nofile},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": fn.name[:64],
        "mounts": mounts,
        "linux": linux,
    }


def rootfs_binds(package: str, extra: tuple[str, ...]) -> list[str]:
    binds = rootfs.plan_binds(package, extra, packages=WORKER_PACKAGES)
    targets = [b.target for b in sorted(binds, key=lambda b: len(b.target))]
    # Merged-/usr hosts: /lib64 etc. are symlinks into /usr; bind them as the
    # directories they point to so the dynamic loader's paths resolve.
    for link in rootfs.USR_LINKS:
        if Path(link).is_symlink() and Path(link).resolve().is_dir():
            targets.append(link)
    return targets
