#!/usr/bin/env bash
# Install a single-node SLURM (Debian packages: munge, MariaDB, slurmdbd, slurmctld, slurmd, client tools).
# Idempotent: packages already present are left alone. Needs root (or sudo) and Debian's package archive.
# The daemons are NOT started here (no systemd is assumed): run slurm/local_cluster/start.sh for that.
set -euo pipefail

PACKAGES=(munge mariadb-server slurmctld slurmd slurmdbd slurm-client)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install.sh: run as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install.sh: all SLURM packages already installed"
    exit 0
fi

# Keep the packages' maintainer scripts from trying to start daemons through a service manager that is not
# there; start.sh starts them by hand. A policy-rc.d that was already in place is kept.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    own_policy=1
fi
trap '[ "$own_policy" = 1 ] && $SUDO rm -f "$policy"' EXIT

echo "install.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install.sh: done (slurm $(dpkg-query -W -f='${Version}' slurm-client))"
