"""Write data_samples/registry.json: the public datasets under $SHAPEPRIOR_DATA
(default ../shared/data) with file sizes and SHA-256, so that a run can prove
which inputs it used. The data themselves are never copied into this
repository (several licences are non-commercial or share-alike).

    python data_samples/make_registry.py
"""

import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LICENCES = {
    "kits19": "CC BY-NC-SA 4.0 (non-commercial, share-alike)",
    "msd_hippocampus": "CC BY-SA 4.0 (share-alike)",
    "adrenal3d": "CC BY 4.0",
    "totalsegmentator_example": "Apache-2.0 (labels are model output, not ground truth)",
    "tcia_mr_dicom": "CC BY 3.0 per TCIA (verify)",
}


def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def main():
    from shapeprior.data import data_root

    root = data_root()
    if not root.is_dir():
        print(f"no data under {root} (set SHAPEPRIOR_DATA)", file=sys.stderr)
        return 2
    reg = {"root": "$SHAPEPRIOR_DATA", "datasets": {}}
    for ds in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in ds.rglob("*") if p.is_file())
        reg["datasets"][ds.name] = {
            "licence": LICENCES.get(ds.name, "see README.txt"),
            "n_files": len(files),
            "files": {str(p.relative_to(ds)): {"bytes": p.stat().st_size, "sha256": sha256(p)}
                      for p in files},
        }
    out = HERE / "registry.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(reg, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}: " + ", ".join(f"{k} ({v['n_files']} files)" for k, v in reg["datasets"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
