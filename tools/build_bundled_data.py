"""Build the bundled default subsets (src/mops/data/bundled/*.jsonl.gz) from ../shared/data.

Run once by a maintainer: `python tools/build_bundled_data.py ../shared/data`. The paper's selection
(5,000 examples, 7 tasks, balanced, de-duplicated, seed 0) is stored in the mops JSONL shape, so a fresh
install needs nothing outside the package.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from mops.data.readers import read_path
from mops.data.selection import select_balanced
from mops.data.tasks import PAPER_TASKS, PAPER_TOTAL

OUT = Path(__file__).resolve().parents[1] / "src" / "mops" / "data" / "bundled"


def main(shared_data: Path) -> None:
    sni = shared_data / "super-natural-instructions"
    sources = {"dolly": [shared_data / "dolly"], "sni": [sni / f"{task}.json" for task in PAPER_TASKS["sni"]]}
    for name, paths in sources.items():
        examples = [ex for path in paths for ex in read_path(path).examples]
        subset = select_balanced(examples, PAPER_TASKS[name], PAPER_TOTAL, seed=0)
        with gzip.GzipFile(OUT / f"{name}.jsonl.gz", "wb", mtime=0) as raw:
            for ex in subset:
                raw.write((json.dumps(ex.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
        counts = {t: sum(ex.task == t for ex in subset) for t in PAPER_TASKS[name]}
        print(name, len(subset), counts)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
