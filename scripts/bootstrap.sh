#!/bin/sh
# Create (or update) a virtualenv with huselet installed in it.
#   sh scripts/bootstrap.sh          -> .venv with huselet (editable)
#   sh scripts/bootstrap.sh test     -> .venv with huselet + test tools, and the
#                                       host packages the tests use (when root)
#   sh scripts/bootstrap.sh --venv DIR  -> a non-editable install into DIR
# Works on a fresh Debian with Python >= 3.11: installs python3-venv if missing.
set -eu
cd "$(dirname "$0")/.."
venv=.venv
mode=run
while [ $# -gt 0 ]; do
    case "$1" in
        test) mode=test ;;
        --venv) venv=$2; mode=install; shift ;;
        *) echo "usage: $0 [test] [--venv DIR]" >&2; exit 2 ;;
    esac
    shift
done

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing Debian packages: $*" >&2
        # Refresh the package lists when they are missing (fresh machines, CI).
        if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v lock)" ]; then
            apt-get update -qq >&2
        fi
        # A stale package list fails the first try: refresh it once and retry.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || {
            apt-get update -qq >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
        }
    else
        echo "bootstrap: please install these Debian packages: $*" >&2
        return 1
    fi
}

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "bootstrap: huselet needs Python >= 3.11, found $(python3 --version 2>&1)" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    }
fi
pip="$venv/bin/python -m pip install -q --disable-pip-version-check"
case "$mode" in
    run) $pip -e . ;;
    install) $pip . ;;
    test)
        $pip -e '.[test]'
        # Host tools the tests drive for real (systemd-analyze verifies the unit).
        # Host tools the tests drive for real: systemd-analyze verifies the unit,
        # bwrap and runc back the bwrap and oci runtimes, setpriv drops uids.
        missing=""
        command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
        command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
        command -v runc >/dev/null 2>&1 || missing="$missing runc"
        command -v setpriv >/dev/null 2>&1 || missing="$missing util-linux"
        # etcd backs the central scheduler's leadership and desired state.
        command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
        command -v etcdctl >/dev/null 2>&1 || missing="$missing etcd-client"
        # Without root or apt the tests that need these skip, saying why.
        [ -z "$missing" ] || apt_install $missing || true
        ;;
esac
# Zygotes and instances run `python -I -B`: they never write bytecode, and a
# module without a valid .pyc is compiled again in every zygote (its instances
# pay page faults for it). Compile the packages where this venv imports them
# from (this checkout for an editable install); -I: not from the working dir.
"$venv/bin/python" -I -m huselet.bytecode
