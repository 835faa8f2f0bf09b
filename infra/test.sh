#!/usr/bin/env bash
# The README's test command: sets up on this machine what the tests need, then runs the suite.
# Start it by its path from any folder (it works in the repository it belongs to); arguments go to
# `cargo test` (`infra/test.sh -p renderer`, `infra/test.sh -- --nocapture`).
#
#   PostgreSQL  the store suite runs on 127.0.0.1:5432 (or TEST_POSTGRES_URL): a local cluster that
#               is down is started
#   Chromium    the dashboard test drives Debian's /usr/bin/chromium (or CHROMIUM): installed with
#               apt-get when missing and this user may (root, or sudo without a password); without
#               it the dashboard test says it did not run, unless REQUIRE_BROWSER is set
#   moto        S3 and SNS on loopback for the AWS tests, installed into infra/.venv
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "infra/test.sh: $*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1
  fi
}

if [ -z "${TEST_POSTGRES_URL:-}" ] && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  version="$(ls /etc/postgresql 2>/dev/null | head -n 1 || true)"
  if [ -n "$version" ]; then
    say "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start \
      || pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null || {
    say "PostgreSQL is not on 127.0.0.1:5432 and no local cluster could be started: install one (trust auth) or set TEST_POSTGRES_URL"
    exit 1
  }
fi

if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  if as_root true 2>/dev/null && command -v apt-get >/dev/null; then
    say "installing Debian's Chromium for the dashboard test"
    as_root apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
      || { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends chromium >/dev/null; }
  else
    say "no Chromium and no way to install it here (needs root or sudo): the dashboard test will say it did not run"
  fi
fi

bash infra/dev-stack.sh install

exec cargo test --workspace "$@"
