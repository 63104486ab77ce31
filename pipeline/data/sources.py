"""Where every raw file comes from: official URL, pinned checksum, and where it lands under ``data/raw``.

The layout under ``data/raw`` is the layout of the project's offline mirror (``../shared/data/raw``):
a mirror is any folder laid out like this. Checksums are sha256 where the file was obtained and
checked; for files nobody here could obtain, the git blob id from SOURCES.md (``sha1("blob <size>\\0" +
bytes)``), which pins the same bytes.

``online``: fetched when no mirror is given. ``required``: a download without it fails. The partial
ReDial train subsets are mirror-only: online users get the full train split from the official zip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import DataError

GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class RawFile:
    dataset: str
    path: str  # relative to data/raw
    url: str
    sha256: str | None = None
    git_blob: str | None = None
    required: bool = True
    online: bool = True
    mirror: bool = True
    # zip archives: member name -> path under data/raw
    members: dict[str, str] = field(default_factory=dict)


REDIAL_ZIP = RawFile(
    "redial",
    "redial/redial_dataset.zip",
    "https://github.com/ReDialData/website/raw/data/redial_dataset.zip",
    sha256="b48756681ec6f84e0af36979c5e9baa21ea8d9e7036b8764ea9b787bb0baf69b",
    mirror=False,
    members={
        "train_data.jsonl": "redial/train_data.jsonl",
        "test_data.jsonl": "redial/test_data.jsonl",
        "movies_with_mentions.csv": "redial/movies_with_mentions.csv",
    },
)

_KGSF = "Lancelot39/KGSF/a10c02cf31dd70d55e972c9ad046df16886f88e1"
_INSP = "sweetpeach/Inspired/782d7c1845d11f75d2542809c7f2a51b63ef0304"
_TAMIZH = "Tamizh2907/KGSF---movie-recommender-system"

SOURCES: tuple[RawFile, ...] = (
    REDIAL_ZIP,
    # Online these two come from the zip; from a mirror they are copied as they are.
    RawFile("redial", "redial/test_data.jsonl", f"{GH}/ReDialData/website/849e9eb1bb60e312f8bf4daa82fc10a285e9318b/test_data",
            sha256="d7781750787d104ac005e829cc7e6277d25b14644a223b0c2445aaaded6b19ac", online=False),
    RawFile("redial", "redial/movies_with_mentions.csv", f"{GH}/ReDialData/website/849e9eb1bb60e312f8bf4daa82fc10a285e9318b/movies_with_mentions.csv",
            sha256="0d408daa474ac95b959a739a261dddd997dd800f5ea585da15a434a26187dbb0", online=False),
    RawFile("redial", "redial/train_data.jsonl", f"{GH}/ReDialData/website/849e9eb1bb60e312f8bf4daa82fc10a285e9318b/train_data",
            git_blob="bb882d7e398062df7b7e08e1261e05cf75f3268c", required=False, online=False),
    RawFile("redial", "redial/partial_train_subset_kgsf/valid_data.jsonl", f"{GH}/{_KGSF}/data/valid_data.jsonl",
            sha256="037d2be6bd375e1869dda26375523067c7e997b4aa9826825793ad7e4978a88c", required=False, online=False),
    RawFile("redial", "redial/partial_train_subset_tamizh2907/train_data.jsonl",
            f"{GH}/{_TAMIZH}/e91320ef960ed1141a19e7794630bf6cc71b9896/data/train_data.jsonl",
            sha256="920828563531de58210518c1b2952bd1d1bb2a31ae05d2ed235036a500b6d22c", required=False, online=False),
    RawFile("redial", "redial/partial_train_subset_shupeili/valid_data.jsonl",
            f"{GH}/ShupeiLi/KGSF/bc706b4c908b3561018d1ed7775ccda778c5f35e/data/valid_data.jsonl",
            sha256="197594314861922983384ed9b4271c16ce9723651b488c2b25b7d3271f6efe90", required=False, online=False),
    RawFile("redial", "redial/partial_train_subset_irreel/valid_data.jsonl",
            f"{GH}/Irreel/ConversationRecSys/8dd00bd19d6fedb08a9e311079ee6bb0a903ddff/data/valid_data.jsonl",
            sha256="d8ecd065b71e89b0486f18fc6f5284aed9a2ba4ce58d64f17e1cfdddfd26bf7a", required=False, online=False),
    RawFile("redial", "redial/partial_train_subset_irreel/test_data.jsonl",
            f"{GH}/Irreel/ConversationRecSys/8dd00bd19d6fedb08a9e311079ee6bb0a903ddff/data/test_data.jsonl",
            sha256="dc0180d0d2ca1f2b3a02bb9629f861db0f1a04ea659deb69e7fec07c7900baa1", required=False, online=False),
    RawFile("redial", "ievalm_crs/redial/id2info.json",
            f"{GH}/RUCAIBox/iEvaLM-CRS/162e2f442fb0799550af587dce0285a2d5ca897f/data/redial/id2info.json",
            sha256="7bdfe9a9c7f1b4d59aa9a5aeba0029071fd5a7232b61c8257212a335ffe424f7"),
    # INSPIRED: official TSVs; the UniCRS-processed copy is the only train split on the mirror.
    RawFile("inspired", "inspired/dialog_data/train.tsv", f"{GH}/{_INSP}/data/dialog_data/train.tsv",
            git_blob="e6044150da12d630d9cd5d40ca2ec36c498f20a6", required=False),
    RawFile("inspired", "inspired/dialog_data/dev.tsv", f"{GH}/{_INSP}/data/dialog_data/dev.tsv",
            sha256="15a955be002222ba9e95f886802e06a91fb5e457f8a25deae3e7908d58faa947"),
    RawFile("inspired", "inspired/dialog_data/test.tsv", f"{GH}/{_INSP}/data/dialog_data/test.tsv",
            sha256="a10f63ff26045158460730d4829ffba74bee86fb744d9f48c1c1c511ef609993"),
    RawFile("inspired", "inspired/movie_database.tsv", f"{GH}/{_INSP}/data/movie_database.tsv",
            git_blob="5e68608a0d1aee3ca107275aed0de1751e3cb382", required=False),
    RawFile("inspired", "inspired/unicrs_format_tamizh2907/train_data_dbpedia.jsonl",
            f"{GH}/{_TAMIZH}/3ea44ecdbf109c226e6f581ed05cea010f70d310/inspired/train_data_dbpedia.jsonl",
            sha256="e8f4600ab31266848081be7ac597e471f2204c2ab7d1887f81ebc2a4ec53dde8", required=False, online=False),
    RawFile("inspired", "ievalm_crs/redial/id2info.json",
            f"{GH}/RUCAIBox/iEvaLM-CRS/162e2f442fb0799550af587dce0285a2d5ca897f/data/redial/id2info.json",
            sha256="7bdfe9a9c7f1b4d59aa9a5aeba0029071fd5a7232b61c8257212a335ffe424f7"),
    # INSPIRED and IARD render / join titles through ReDial's catalogue.
    RawFile("inspired", "redial/movies_with_mentions.csv", f"{GH}/ReDialData/website/849e9eb1bb60e312f8bf4daa82fc10a285e9318b/movies_with_mentions.csv",
            sha256="0d408daa474ac95b959a739a261dddd997dd800f5ea585da15a434a26187dbb0"),
    RawFile("iard", "redial/movies_with_mentions.csv", f"{GH}/ReDialData/website/849e9eb1bb60e312f8bf4daa82fc10a285e9318b/movies_with_mentions.csv",
            sha256="0d408daa474ac95b959a739a261dddd997dd800f5ea585da15a434a26187dbb0"),
    RawFile("iard", "iard/umap2020_IARD_Cai.json",
            f"{GH}/wanlingcai1997/umap_2020_IARD/021d2a8f333dacb8a0e61096dbec23a899bbd784/umap2020_IARD_Cai.json",
            sha256="aa7b9bad68765d80b653d716d124e561cc912437f23f9fa941e222361fb9883f"),
    RawFile("iard", "iard/README.md",
            f"{GH}/wanlingcai1997/umap_2020_IARD/021d2a8f333dacb8a0e61096dbec23a899bbd784/README.md",
            sha256="3ee69900bc77d81ac217ef3ea99239fd65b9186ca80485b31b2b106c2eba8665"),
)


def sources_for(datasets: list[str]) -> list[RawFile]:
    """The raw files the given datasets need, each path once."""
    seen: set[str] = set()
    out = []
    for src in SOURCES:
        if src.dataset in datasets and src.path not in seen:
            seen.add(src.path)
            out.append(src)
    return out


def load_manifest(path: str | Path) -> list[RawFile]:
    """A custom manifest (JSON list of {dataset, path, sha256 | git_blob, [url], [required]}) for a custom
    mirror, e.g. the committed test slices: the checksums pin *those* bytes instead of the official ones."""
    import json

    entries = json.loads(Path(path).read_text())
    out = []
    for number, e in enumerate(entries):
        missing = [k for k in ("dataset", "path") if k not in e]
        if missing or not (e.get("sha256") or e.get("git_blob")):
            raise DataError(f"{path}: entry {number}: needs dataset, path and sha256 or git_blob; got {sorted(e)}")
        out.append(RawFile(e["dataset"], e["path"], e.get("url", ""), sha256=e.get("sha256"), git_blob=e.get("git_blob"),
                           required=e.get("required", True), online=bool(e.get("url"))))
    return out
