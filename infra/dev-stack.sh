#!/usr/bin/env bash
# The local distributed stack: PostgreSQL, and a moto server on loopback standing in for S3 and SNS,
# with a bucket and the two topics created. Idempotent: run it again and it reuses what is running.
#
#   infra/dev-stack.sh [start]   start what is not running, create bucket/topics, print the env to export
#   infra/dev-stack.sh install   only install moto into infra/.venv (what the tests use)
#   infra/dev-stack.sh env       print the env again
#   infra/dev-stack.sh stop      stop only what this script started
#
# MOTO_PORT (default 5055) and STACK_BUCKET / STACK_RENDER_TOPIC / STACK_EVENTS_TOPIC override names.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="$HERE/.venv"
STATE="$HERE/.stack"
MOTO_PORT="${MOTO_PORT:-5055}"
MOTO_URL="http://127.0.0.1:$MOTO_PORT"
BUCKET="${STACK_BUCKET:-conductor-bodies}"
RENDER_TOPIC="${STACK_RENDER_TOPIC:-conductor-render-jobs}"
EVENTS_TOPIC="${STACK_EVENTS_TOPIC:-conductor-campaign-events}"
REGION=us-east-1
ACCOUNT=123456789012   # moto's account
mkdir -p "$STATE"

install() {
  # Several test binaries may ask at once: one installs, the others wait for it.
  exec 9>"$STATE/install.lock"
  flock 9
  if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "installing moto into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'moto[server]'
  fi
  flock -u 9
}

moto_up() { (exec 3<>"/dev/tcp/127.0.0.1/$MOTO_PORT") 2>/dev/null; }

start_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q; then return; fi
  local version
  version="$(ls /etc/postgresql | head -n 1)"
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  echo "$version" >"$STATE/postgres.started"
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && return; sleep 1; done
  echo "PostgreSQL did not come up" >&2
  exit 1
}

start_moto() {
  if moto_up; then return; fi
  echo "starting moto on $MOTO_URL" >&2
  nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$STATE/moto.log" 2>&1 &
  echo $! >"$STATE/moto.pid"
  for _ in $(seq 1 50); do moto_up && return; sleep 0.2; done
  echo "moto did not listen on $MOTO_URL (see $STATE/moto.log)" >&2
  exit 1
}

create_resources() {
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "$VENV/bin/python" - "$MOTO_URL" "$BUCKET" "$RENDER_TOPIC" "$EVENTS_TOPIC" <<'PY'
import sys, boto3
url, bucket, *topics = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
sns = boto3.client("sns", endpoint_url=url, region_name="us-east-1")
for t in topics:
    sns.create_topic(Name=t)  # idempotent
PY
}

print_env() {
  cat <<EOF
# The local stack is up. Export these in each shell that runs a conductor, renderer or sender:
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=$REGION
export CONDUCTOR__STORE__URL=postgres://postgres@127.0.0.1:5432/postgres
export CONDUCTOR__BODIES__URL=s3://$BUCKET/bodies
export CONDUCTOR__BODIES__S3__ENDPOINT=$MOTO_URL CONDUCTOR__BODIES__S3__FORCE_PATH_STYLE=true
export CONDUCTOR__DISPATCH__SNS__TOPIC_ARN=arn:aws:sns:$REGION:$ACCOUNT:$RENDER_TOPIC
export CONDUCTOR__DISPATCH__SNS__ENDPOINT=$MOTO_URL
export CONDUCTOR__EVENTS__SNS__TOPIC_ARN=arn:aws:sns:$REGION:$ACCOUNT:$EVENTS_TOPIC
export CONDUCTOR__EVENTS__SNS__ENDPOINT=$MOTO_URL
export CONDUCTOR__WORKERS__SECRET=dev-stack-secret-$(cat "$STATE/secret")
# moto cannot sign SNS messages: renderers on this stack must not insist on signatures.
export CONDUCTOR__RENDERER__VERIFY_SIGNATURES=false
EOF
}

stop() {
  if [ -f "$STATE/moto.pid" ]; then
    kill "$(cat "$STATE/moto.pid")" 2>/dev/null || true
    rm -f "$STATE/moto.pid"
    echo "stopped moto" >&2
  fi
  if [ -f "$STATE/postgres.started" ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(cat "$STATE/postgres.started")" main stop || true
    rm -f "$STATE/postgres.started"
    echo "stopped PostgreSQL" >&2
  fi
}

case "${1:-start}" in
  install) install ;;
  start)
    install
    start_postgres
    start_moto
    create_resources
    [ -f "$STATE/secret" ] || od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$STATE/secret"
    print_env
    ;;
  env) print_env ;;
  stop) stop ;;
  *) echo "usage: $0 [start|install|env|stop]" >&2; exit 2 ;;
esac
