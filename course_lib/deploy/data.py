"""Deterministic synthetic Chinese addresses with an area class and character spans per entity type.

Introduced in ``01_torchscript_triton.ipynb``. The original service cleaned real customer addresses
with a private checkpoint; we have neither, so this module *generates* the data: a small gazetteer
(province → city → district), road names, house numbers, POI names and room numbers, with the noise
real address fields have (missing levels, ``上海上海市``-style duplicated province/city, short forms,
spaces, typos, prefixes). Every example carries

* ``area``: one of seven geographic areas (华北, 东北, 华东, 华中, 华南, 西南, 西北) — the class label, and
* ``entities``: ``[{"type", "start", "end", "text"}]`` character spans (``end`` exclusive).

Same seed → byte-identical files (``write_dataset`` regenerates ``data/addresses/``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

AREAS = ["华北", "东北", "华东", "华中", "华南", "西南", "西北"]
AREAS_EN = {"华北": "North", "东北": "Northeast", "华东": "East", "华中": "Central", "华南": "South",
            "西南": "Southwest", "西北": "Northwest"}  # for plot labels (matplotlib's default font has no CJK glyphs)
ENTITY_TYPES = ["prov", "city", "district", "road", "roadno", "poi", "room"]
ENTITY_NAMES = {
    "prov": "province 省",
    "city": "city 市",
    "district": "district 区",
    "road": "road 路",
    "roadno": "road number 号",
    "poi": "point of interest (estate, building)",
    "room": "building / unit / room",
}
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# (full name, short name, area, {city: [districts]}); municipalities have one city named like the province.
GAZETTEER: list[tuple[str, str, str, dict[str, list[str]]]] = [
    ("北京市", "北京", "华北", {"北京市": ["朝阳区", "海淀区", "东城区", "西城区", "丰台区"]}),
    ("天津市", "天津", "华北", {"天津市": ["和平区", "河西区", "南开区", "滨海新区"]}),
    ("河北省", "河北", "华北", {"石家庄市": ["长安区", "桥西区", "裕华区"], "唐山市": ["路南区", "路北区", "丰润区"],
                               "保定市": ["竞秀区", "莲池区"]}),
    ("山西省", "山西", "华北", {"太原市": ["小店区", "迎泽区", "杏花岭区"], "大同市": ["平城区", "云冈区"]}),
    ("内蒙古自治区", "内蒙古", "华北", {"呼和浩特市": ["新城区", "回民区", "赛罕区"], "包头市": ["昆都仑区", "青山区"]}),
    ("辽宁省", "辽宁", "东北", {"沈阳市": ["和平区", "沈河区", "皇姑区"], "大连市": ["中山区", "西岗区", "甘井子区"]}),
    ("吉林省", "吉林", "东北", {"长春市": ["朝阳区", "南关区", "宽城区"], "吉林市": ["船营区", "昌邑区"]}),
    ("黑龙江省", "黑龙江", "东北", {"哈尔滨市": ["道里区", "南岗区", "香坊区"], "齐齐哈尔市": ["龙沙区", "建华区"]}),
    ("上海市", "上海", "华东", {"上海市": ["黄浦区", "徐汇区", "浦东新区", "静安区", "闵行区"]}),
    ("江苏省", "江苏", "华东", {"南京市": ["玄武区", "鼓楼区", "建邺区"], "苏州市": ["姑苏区", "吴中区", "相城区"],
                               "无锡市": ["梁溪区", "滨湖区"]}),
    ("浙江省", "浙江", "华东", {"杭州市": ["西湖区", "上城区", "滨江区"], "宁波市": ["海曙区", "鄞州区", "江北区"]}),
    ("安徽省", "安徽", "华东", {"合肥市": ["蜀山区", "包河区", "庐阳区"], "芜湖市": ["镜湖区", "弋江区"]}),
    ("福建省", "福建", "华东", {"福州市": ["鼓楼区", "台江区", "仓山区"], "厦门市": ["思明区", "湖里区", "集美区"]}),
    ("江西省", "江西", "华东", {"南昌市": ["东湖区", "西湖区", "青山湖区"], "赣州市": ["章贡区", "南康区"]}),
    ("山东省", "山东", "华东", {"济南市": ["历下区", "市中区", "槐荫区"], "青岛市": ["市南区", "市北区", "黄岛区"]}),
    ("河南省", "河南", "华中", {"郑州市": ["金水区", "二七区", "中原区"], "洛阳市": ["西工区", "洛龙区"]}),
    ("湖北省", "湖北", "华中", {"武汉市": ["江汉区", "武昌区", "洪山区"], "宜昌市": ["西陵区", "伍家岗区"]}),
    ("湖南省", "湖南", "华中", {"长沙市": ["岳麓区", "芙蓉区", "天心区"], "株洲市": ["天元区", "芦淞区"]}),
    ("广东省", "广东", "华南", {"广州市": ["天河区", "越秀区", "海珠区"], "深圳市": ["南山区", "福田区", "罗湖区"],
                               "佛山市": ["禅城区", "南海区"]}),
    ("广西壮族自治区", "广西", "华南", {"南宁市": ["青秀区", "兴宁区", "西乡塘区"], "桂林市": ["秀峰区", "象山区"]}),
    ("海南省", "海南", "华南", {"海口市": ["龙华区", "美兰区"], "三亚市": ["吉阳区", "天涯区"]}),
    ("重庆市", "重庆", "西南", {"重庆市": ["渝中区", "江北区", "沙坪坝区", "九龙坡区"]}),
    ("四川省", "四川", "西南", {"成都市": ["锦江区", "青羊区", "武侯区"], "绵阳市": ["涪城区", "游仙区"]}),
    ("贵州省", "贵州", "西南", {"贵阳市": ["南明区", "云岩区", "观山湖区"], "遵义市": ["红花岗区", "汇川区"]}),
    ("云南省", "云南", "西南", {"昆明市": ["五华区", "盘龙区", "官渡区"], "曲靖市": ["麒麟区", "沾益区"]}),
    ("西藏自治区", "西藏", "西南", {"拉萨市": ["城关区", "堆龙德庆区"]}),
    ("陕西省", "陕西", "西北", {"西安市": ["雁塔区", "碑林区", "未央区"], "宝鸡市": ["渭滨区", "金台区"]}),
    ("甘肃省", "甘肃", "西北", {"兰州市": ["城关区", "七里河区", "安宁区"], "天水市": ["秦州区", "麦积区"]}),
    ("青海省", "青海", "西北", {"西宁市": ["城东区", "城西区", "城中区"]}),
    ("宁夏回族自治区", "宁夏", "西北", {"银川市": ["兴庆区", "金凤区", "西夏区"]}),
    ("新疆维吾尔自治区", "新疆", "西北", {"乌鲁木齐市": ["天山区", "沙依巴克区", "新市区"]}),
]

ROAD_STEMS = ["人民", "解放", "中山", "建设", "和平", "新华", "长江", "黄河", "文化", "学府", "科技", "东风",
              "胜利", "光明", "幸福", "青年", "友谊", "团结", "民主", "工业", "花园", "滨江", "迎宾", "朝阳",
              "振兴", "育才", "金桥", "世纪", "南京", "北京"]
ROAD_SUFFIXES = ["路", "大道", "街", "大街", "东路", "西路", "南路", "北路", "中路", "巷"]
POI_STEMS = ["阳光", "金地", "万科", "绿地", "华润", "保利", "碧桂园", "龙湖", "世茂", "融创", "翠湖", "锦绣",
             "丽景", "天鹅湖", "紫荆", "星河", "银泰", "新城", "海棠", "枫林", "书香", "长城", "东方", "明珠"]
POI_SUFFIXES = ["花园", "小区", "大厦", "广场", "中心", "公寓", "家园", "苑", "国际", "商城", "新村", "写字楼"]
PREFIXES = ["地址：", "收货地址：", "寄往", "送至", "地址:"]
SUFFIXES = ["附近", "（近地铁站）", "门口", "前台"]
# visually / phonetically confusable characters: the typo noise swaps one character inside an entity
TYPOS = {"路": "璐", "区": "曲", "市": "是", "号": "好", "省": "剩", "街": "接", "苑": "园", "花": "华",
         "园": "圆", "小": "晓", "江": "将", "山": "三", "西": "希", "东": "冬", "南": "难", "新": "心",
         "中": "钟", "城": "成", "湖": "胡", "海": "每", "阳": "杨", "光": "广", "大": "太", "金": "今"}


@dataclass(frozen=True)
class NoiseConfig:
    """Probabilities of each kind of noise in :func:`generate` (notebook 01)."""

    drop_prov: float = 0.35
    drop_city: float = 0.15
    drop_district: float = 0.15
    drop_road: float = 0.15
    drop_roadno: float = 0.2
    drop_poi: float = 0.3
    drop_room: float = 0.4
    short_prov: float = 0.4
    short_city: float = 0.25
    duplicate: float = 0.08
    spaces: float = 0.25
    typo: float = 0.12
    prefix: float = 0.1
    suffix: float = 0.05


def _province_parts(rng: random.Random, prov: tuple, city: str, noise: NoiseConfig) -> list[tuple[str, str | None]]:
    """(text, entity type) pieces for the province + city levels, with dropping/short forms/duplication."""
    full, short, _, _ = prov
    municipality = city == full
    parts: list[tuple[str, str | None]] = []
    keep_prov = rng.random() >= noise.drop_prov
    keep_city = rng.random() >= noise.drop_city or not keep_prov
    p_text = short if rng.random() < noise.short_prov else full
    c_text = city[:-1] if (rng.random() < noise.short_city and len(city) > 2) else city
    if municipality:
        if rng.random() < noise.duplicate * 3:  # the classic 上海上海市 / 北京市北京市
            parts += [(p_text, "prov"), (city, "city")]
        elif keep_prov and not keep_city:
            parts.append((p_text, "prov"))
        else:
            parts.append((c_text if keep_city else p_text, "city" if keep_city else "prov"))
        return parts
    if keep_prov:
        parts.append((p_text, "prov"))
        if rng.random() < noise.duplicate:  # 江苏江苏省…
            parts.append((full if p_text == short else short, "prov"))
    if keep_city:
        parts.append((c_text, "city"))
        if rng.random() < noise.duplicate / 2:  # 南京南京市…
            parts.append((city, "city"))
    return parts


def _room(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return f"{rng.randint(1, 30)}栋{rng.randint(1, 6)}单元{rng.randint(1, 33)}{rng.randint(1, 4):02d}室"
    if kind < 0.75:
        return f"{rng.randint(1, 40)}号楼{rng.randint(1, 28)}{rng.randint(1, 8):02d}室"
    return f"{rng.randint(1, 30)}{rng.randint(1, 9):02d}室"


def make_example(rng: random.Random, noise: NoiseConfig = NoiseConfig(), idx: int = 0) -> dict:
    """One labelled address: ``{"id", "text", "area", "area_id", "entities"}`` (spans are exclusive-end) (notebook 01)."""
    prov = rng.choice(GAZETTEER)
    city = rng.choice(sorted(prov[3]))
    district = rng.choice(prov[3][city])
    parts = _province_parts(rng, prov, city, noise)
    if rng.random() >= noise.drop_district:
        parts.append((district, "district"))
    if rng.random() >= noise.drop_road:
        parts.append((rng.choice(ROAD_STEMS) + rng.choice(ROAD_SUFFIXES), "road"))
        if rng.random() >= noise.drop_roadno:
            n = rng.randint(1, 999)
            parts.append((f"{n}号" if rng.random() < 0.9 else f"{n}-{rng.randint(1, 9)}号", "roadno"))
    if rng.random() >= noise.drop_poi:
        poi = rng.choice(POI_STEMS) + rng.choice(POI_SUFFIXES)
        if rng.random() < 0.15:
            poi += f"{rng.choice('一二三四五')}期"
        parts.append((poi, "poi"))
    if rng.random() >= noise.drop_room:
        parts.append((_room(rng), "room"))
    # typo: swap one confusable character inside one entity (the span and its type are unchanged)
    if rng.random() < noise.typo:
        cand = [(i, j) for i, (t, _) in enumerate(parts) for j, ch in enumerate(t) if ch in TYPOS]
        if cand:
            i, j = rng.choice(cand)
            t, ty = parts[i]
            parts[i] = (t[:j] + TYPOS[t[j]] + t[j + 1:], ty)
    text, entities = "", []
    if rng.random() < noise.prefix:
        text += rng.choice(PREFIXES)
    spaced = rng.random() < noise.spaces
    for k, (piece, ty) in enumerate(parts):
        if k and spaced and rng.random() < 0.5:
            text += " "
        start = len(text)
        text += piece
        if ty is not None:
            entities.append({"type": ty, "start": start, "end": len(text), "text": piece})
    if rng.random() < noise.suffix:
        text += rng.choice(SUFFIXES)
    if spaced and rng.random() < 0.2:
        text = " " + text  # leading space: shift every span by one
        for e in entities:
            e["start"] += 1
            e["end"] += 1
    return {"id": idx, "text": text, "area": prov[2], "area_id": AREAS.index(prov[2]), "entities": entities}


def generate(n: int, seed: int = 0, noise: NoiseConfig = NoiseConfig()) -> list[dict]:
    """``n`` labelled addresses from a seeded RNG: the same (n, seed, noise) always gives the same list (notebook 01)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [make_example(rng, noise, idx=i) for i in range(n)]


def check_example(ex: dict) -> None:
    """Raise ValueError unless every span of ``ex`` matches its text and type (used by tests and loaders) (notebook 01)."""
    for e in ex["entities"]:
        if e["type"] not in ENTITY_TYPES:
            raise ValueError(f"example {ex.get('id')}: unknown entity type {e['type']!r}")
        if ex["text"][e["start"]:e["end"]] != e["text"]:
            raise ValueError(f"example {ex.get('id')}: span {e} does not match text {ex['text']!r}")
    if ex["area"] not in AREAS or AREAS.index(ex["area"]) != ex["area_id"]:
        raise ValueError(f"example {ex.get('id')}: bad area {ex['area']!r}/{ex['area_id']}")


def build_vocab(texts) -> list[str]:
    """A character-level BERT vocabulary: specials, ASCII digits/letters (+ ``##`` continuations), every char seen (notebook 01)."""
    ascii_chars = [str(d) for d in range(10)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    chars = sorted({ch for t in texts for ch in t if not ch.isspace()} - set(ascii_chars))
    chars = [c for c in chars if not ("A" <= c <= "Z")]  # the tokenizer lower-cases ASCII letters
    return SPECIAL_TOKENS + ascii_chars + ["##" + c for c in ascii_chars] + chars


SPLITS = {"train": (3000, 1), "dev": (400, 2), "test": (600, 3)}  # name: (size, seed)


def default_dir() -> Path:
    """``data/addresses`` in the course repository (notebook 01)."""
    from course_lib import paths

    return paths.data_dir() / "addresses"


def write_jsonl(rows: list[dict], path: Path) -> None:
    """Write one JSON object per line, UTF-8, Chinese kept readable (``ensure_ascii=False``) (notebook 01)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL split written by :func:`write_dataset` (notebook 01)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_dataset(out: str | Path | None = None, splits: dict | None = None) -> dict[str, Path]:
    """Generate the train/dev/test splits + ``labels.json``/``areas.txt``/``entity_types.txt`` + ``vocab.txt`` (notebook 01).

    Returns {file kind: path}. Deterministic: re-running gives byte-identical files.
    """
    out = Path(out) if out is not None else default_dir()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    texts: list[str] = []
    for name, (n, seed) in (splits or SPLITS).items():
        rows = generate(n, seed=seed)
        texts += [r["text"] for r in rows]
        files[name] = out / f"{name}.jsonl"
        write_jsonl(rows, files[name])
    files["labels"] = out / "labels.json"
    files["labels"].write_text(
        json.dumps({"areas": AREAS, "entity_types": ENTITY_TYPES, "entity_names": ENTITY_NAMES},
                   ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    files["areas"] = out / "areas.txt"
    files["areas"].write_text("\n".join(AREAS) + "\n", encoding="utf-8")
    files["entity_types"] = out / "entity_types.txt"
    files["entity_types"].write_text("\n".join(ENTITY_TYPES) + "\n", encoding="utf-8")
    files["vocab"] = out / "vocab.txt"
    files["vocab"].write_text("\n".join(build_vocab(texts + PREFIXES + SUFFIXES)) + "\n", encoding="utf-8")
    return files


def load_split(name: str, root: str | Path | None = None) -> list[dict]:
    """The committed split ``name`` (train/dev/test) from ``data/addresses``; a clear error if absent (notebook 01)."""
    root = Path(root) if root is not None else default_dir()
    path = root / f"{name}.jsonl"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; regenerate with `python -m course_lib.deploy.data --out {root}`"
        )
    return read_jsonl(path)


def build_parser():
    """The command line of ``python -m course_lib.deploy.data`` (argparse; ``--help`` lists every option)."""
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m course_lib.deploy.data",
        description="Generate lesson 1's address splits (train/dev/test JSONL), label files and vocab.txt into --out. "
                    "Deterministic: the same files, byte for byte, as the committed data/addresses/.",
        epilog="to replace the committed files: --out data/addresses (in the course checkout)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (created; existing files of the same "
                                                              "names are replaced, other files are left alone)")
    return p


def main(argv=None) -> int:
    """``python -m course_lib.deploy.data --out DIR``: write the dataset into DIR (notebook 01)."""
    import sys

    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        print(f"error: --out {out} is a file, not a folder", file=sys.stderr)
        return 1
    try:
        files = write_dataset(out)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    for kind, p in files.items():
        print(f"{kind:>13}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
