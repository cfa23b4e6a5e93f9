#!/usr/bin/env bash
# Installs dash-agent on a gateway (a Raspberry Pi, or any Linux with
# systemd): the binary, its config and the systemd unit; checks the config,
# then starts the agent. Run again to upgrade: the buffer in
# /var/lib/dash-agent is kept, the previous config saved beside the new one.
#
#   sudo deploy/scripts/install-agent.sh ./dash-agent ./agent.toml
#
# Secrets (the uplink password) go in /etc/dash/agent.env as DASH_ variables,
# readable by root only; the TOML file is world-readable.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 DASH_AGENT_BINARY CONFIG.toml" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "run as root (it installs to /usr/local/bin, /etc/dash and /etc/systemd)" >&2
    exit 1
fi
bin=$1
config=$2
here=$(cd "$(dirname "$0")" && pwd)

"$bin" --version >/dev/null || {
    echo "$bin does not run on this machine (wrong architecture?)" >&2
    exit 1
}
"$bin" check-config "$config"

install -d -m 0755 /etc/dash
if [ -e /etc/dash/agent.toml ] && ! cmp -s "$config" /etc/dash/agent.toml; then
    saved=/etc/dash/agent.toml.$(date -u +%Y%m%dT%H%M%SZ)
    cp /etc/dash/agent.toml "$saved"
    echo "previous config saved as $saved"
fi
install -m 0644 "$config" /etc/dash/agent.toml
if [ ! -e /etc/dash/agent.env ]; then
    install -m 0600 /dev/null /etc/dash/agent.env
    echo "# DASH_UPLINK__PASSWORD=..." > /etc/dash/agent.env
fi
systemctl stop dash-agent 2>/dev/null || true
install -m 0755 "$bin" /usr/local/bin/dash-agent
install -m 0644 "$here/../systemd/dash-agent.service" /etc/systemd/system/dash-agent.service
systemctl daemon-reload
systemctl enable --now dash-agent
sleep 2
systemctl --no-pager --lines=5 status dash-agent || true
cat <<MSG

dash-agent is running.
  status: /var/lib/dash-agent/status.json (also on the aggregator, table agent_status)
  logs:   journalctl -u dash-agent -f
  config: /etc/dash/agent.toml, secrets in /etc/dash/agent.env
MSG
