#!/usr/bin/env bash
# The GPU proof in two device calls (scripts/gpu_proof.py says what each stage shows):
#   bash scripts/gpu_proof.sh --plan     # each call's stages, caps and budget (JSON)
#   bash scripts/gpu_proof.sh --call 1   # then, on the same warm machine:
#   bash scripts/gpu_proof.sh --call 2
#   bash scripts/gpu_proof.sh --cpu --call 1   # the CPU dry run (tests/python/test_gpu_proof.py)
# On the lent GPU machine, after `bash scripts/gpu_prepare.sh` here:
#   device run(command="bash scripts/gpu_proof.sh --call 1", carry=[".deps"], timeout_s=450)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec "${PYTHON:-python3}" scripts/gpu_proof.py "$@"
