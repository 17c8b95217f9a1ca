#!/usr/bin/env bash
# Install MONAI Label 0.8.5 for this app beside the bundle's requirements, keeping torch 2.13.0 (CPU) as it is.
# monailabel and pydicom-seg go in without their declared dependencies (see requirements-monailabel.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -r requirements-monailabel.txt
python -m pip install --quiet --no-deps monailabel==0.8.5 pydicom-seg==0.4.1
python -c "import torch, monailabel.app; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('monailabel', monailabel.__version__, 'torch', torch.__version__)"
