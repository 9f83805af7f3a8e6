"""Post-training mixed precision on EfficientNet-Lite0: kept for old commands; see ``ptq_mixed_precision.py``.

    python benchmarks/ptq_efficientnet_lite0.py [--adaround] [--threads 2]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq_mixed_precision import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--model", "efficientnet_lite0", *sys.argv[1:]]))
