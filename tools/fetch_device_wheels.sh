#!/usr/bin/env bash
# Wheels for the lent GPU machine, which has no package registry: fetch them here into .whl/
# (ignored by git), then name .whl in the device call's `carry`; tools/gpu_round.sh installs
# whatever is in .whl/ into /tmp/site before it runs anything.
#
# The device image (Python 3.12, torch 2.11) already has click, tqdm, numpy, scipy, pillow,
# matplotlib and packaging. It lacks nibabel (NIfTI reading and the MNI152 template) and nilearn
# (only the template file inside it is read; it is never imported, so none of its needs travel).
# Versions are pinned to what this machine's tests run with, so both sides read the same data.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "nibabel==${NIBABEL_VERSION:-5.4.2}" "nilearn==${NILEARN_VERSION:-0.14.1}"
ls -la .whl
du -sh .whl
