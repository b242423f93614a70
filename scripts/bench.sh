#!/usr/bin/env bash
# Runs every benchmark once; figures land in out/bench.txt.
set -euo pipefail
mkdir -p out
go test -run '^$' -bench . -benchmem -count "${COUNT:-1}" -timeout 60m ./... | tee out/bench.txt
