"""Build the ImageNet class-name files shipped in `src/swinv2/labels/` from timm's ImageNet metadata.

timm (Apache-2.0) keeps the WordNet synset lists and the synset -> lemma table under `timm/data/_info/`.
We write one `synset<TAB>names` line per class, in class-index order:

- `imagenet1k_labels.tsv`: the 1000 ILSVRC-2012 classes (`imagenet_synsets.txt`), the order of every
  ImageNet-1k checkpoint (Microsoft, timm, torchvision, Hugging Face).
- `imagenet22k_labels.tsv`: the 21841 classes of ImageNet-22k (fall11, sorted by synset,
  `imagenet22k_synsets.txt`), the order of the Microsoft Swin / Swin V2 22k checkpoints.

Run: python scripts/make_imagenet_labels.py [path/to/timm/data/_info]
"""

from __future__ import annotations

import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "swinv2" / "labels"
FILES = {"imagenet1k_labels.tsv": "imagenet_synsets.txt", "imagenet22k_labels.tsv": "imagenet22k_synsets.txt"}


def main() -> int:
    if len(sys.argv) > 1:
        info = Path(sys.argv[1])
    else:
        import timm.data

        info = Path(timm.data.__file__).parent / "_info"
    lemmas = {}
    for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        synset, names = line.split("\t", 1)
        lemmas[synset] = names.strip()
    for target, source in FILES.items():
        synsets = [s.strip() for s in (info / source).read_text(encoding="utf-8").splitlines() if s.strip()]
        missing = [s for s in synsets if s not in lemmas]
        if missing:
            raise SystemExit(f"{source}: no lemma for {missing[:5]}")
        text = "".join(f"{s}\t{lemmas[s]}\n" for s in synsets)
        (OUT / target).write_text(text, encoding="utf-8")
        print(f"{target}: {len(synsets)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
