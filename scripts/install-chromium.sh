#!/usr/bin/env bash
# Debian's chromium for the browser test (the test never downloads a browser of its own).
set -euo pipefail
source "$(dirname "$0")/common.sh"
need chromium chromium
