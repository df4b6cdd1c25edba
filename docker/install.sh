#!/bin/sh
# The worker image's build steps (Dockerfile), a script so that they run, and are tested, outside a
# container too (tests/ops/test_production.py). Installs the pipelines into DEST as a worker runs them:
# the flows' source, prefect.yaml and .venv/ synced from uv.lock with the named extras and no dev
# group, by the uv version the Makefile pins. Usage: docker/install.sh DEST [EXTRA...]
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:?usage: docker/install.sh DEST [EXTRA...]}
shift
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

uv_version=$(sed -n 's/^UV_VERSION := //p' "$src/Makefile")
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"

for path in flows blocks tasks prefect.yaml pyproject.toml uv.lock README.md LICENSE; do
  cp -R "$src/$path" "$dest/"
done
flags=
for extra in "$@"; do flags="$flags --extra $extra"; done
cd "$dest"
# shellcheck disable=SC2086
UV_PYTHON_DOWNLOADS=never "$tools/bin/uv" sync --frozen --no-dev --python python3 $flags
