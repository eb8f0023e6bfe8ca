#!/usr/bin/env bash
# System packages some tests need. Installed only when missing and only as root; tests that
# need a package that could not be installed skip with the reason.
set -u
packages=(openssh-server openssh-client chromium fonts-dejavu-core)
if [ ${#packages[@]} -eq 0 ]; then exit 0; fi
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then echo "not root: cannot install ${missing[*]}; dependent tests will skip"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null \
  || echo "could not install ${missing[*]}; dependent tests will skip"
exit 0
