#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: python3 (with venv), node, chromium
# and chromedriver, java with
# HdrHistogram's jar (the reference the bench outputs are checked against), and
# kubernetes-validate in a project-local venv under .tools/. Safe to run again: it only
# installs what is absent. Prints the venv's bin folder on its last line.
# With --runtimes it only makes sure python3 and node are there (what `make deploy` needs
# to run the example functions).
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION="${KV_VERSION:-1.37.0}"
VENV=".tools/venv"

say() { printf 'test-deps: %s\n' "$*" >&2; }

apt_install() {
  if ! command -v apt-get >/dev/null; then
    say "missing $*, and no apt-get to install it with: install it by hand"
    exit 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then
    say "apt-get update"
    apt-get update -qq >&2
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

command -v python3 >/dev/null || apt_install python3 python3-venv
command -v node >/dev/null || apt_install nodejs
[ "${1:-}" = "--runtimes" ] && exit 0

# HdrHistogram's Java reference (HistogramLogProcessor): the bench tests check our .hgrm
# and .hlog against it.
if ! command -v java >/dev/null || [ ! -f /usr/share/java/hdrhistogram.jar ]; then
  apt_install default-jre-headless libhdrhistogram-java
fi
# NATS with JetStream for the queue-trigger tests (started on a free loopback port by them).
command -v nats-server >/dev/null || apt_install nats-server
# Headless Chromium and its WebDriver for the dashboard's browser test.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt_install chromium chromium-driver
fi

if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  say "creating $VENV with kubernetes-validate==$KV_VERSION"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" >&2
fi

echo "$PWD/$VENV/bin"
