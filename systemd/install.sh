#!/bin/sh
# Install huselet as a systemd service from this checkout (run as root):
#   venv in /opt/huselet/venv, config in /etc/huselet, unit in /etc/systemd/system.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
sh "$here/scripts/bootstrap.sh" --venv /opt/huselet/venv
install -d -m 0755 /etc/huselet
if [ ! -e /etc/huselet/huselet.toml ]; then
    install -m 0644 "$here/systemd/huselet.toml" /etc/huselet/huselet.toml
    cp -r "$here/huselet/examples" /etc/huselet/examples
fi
install -m 0644 "$here/systemd/huselet.service" /etc/systemd/system/huselet.service
/opt/huselet/venv/bin/huselet run --check --config /etc/huselet/huselet.toml
systemctl daemon-reload
systemctl enable --now huselet.service
echo "huselet installed; try: /opt/huselet/venv/bin/huselet ctl status"
