"""The ``langid``, ``unsafe_filter`` and ``pii`` steps, on hand-made cases and on the real samples."""

from __future__ import annotations

import ast
import collections
import inspect
import json
import random
import sysconfig
from pathlib import Path

import pytest

from lmforge.data.document import DataError, Document
from lmforge.data.pipeline.base import Drop, StepContext
from lmforge.data.steps.langid import LangId, LangIdConfig, identify_language
from lmforge.data.steps.safety import (
    WORDLIST_DIR,
    Pii,
    PiiConfig,
    UnsafeFilter,
    UnsafeFilterConfig,
    read_wordlist,
    valid_id_number,
)

GERMAN = """Die Stadt liegt am Ufer eines breiten Flusses, der im Frühling oft über die Ufer tritt.
Im Mittelalter war sie ein wichtiger Handelsplatz, und noch heute erinnern die alten Speicher an
diese Zeit. Wer durch die engen Gassen der Altstadt geht, kommt an der Kirche vorbei, deren Turm
man schon von weitem sieht. Die meisten Besucher bleiben nur einen Tag, aber es lohnt sich, auch
die Umgebung mit ihren Wäldern und Dörfern kennenzulernen."""
FRENCH = """Le village se trouve au pied d'une colline couverte de vignes. Chaque automne, les habitants
se retrouvent pour les vendanges, et la fête dure souvent plusieurs jours. Les maisons sont
construites avec la pierre de la région, ce qui leur donne une couleur très particulière. Il y a
une petite école, une boulangerie et un café où les anciens jouent aux cartes pendant que les
enfants courent sur la place."""
SPANISH = """La ciudad está situada en la costa y tiene un puerto muy antiguo. Durante el verano llegan
muchos turistas que buscan las playas y el buen tiempo, pero en invierno las calles se quedan
tranquilas. El mercado central abre todos los días desde muy temprano, y allí se puede comprar
pescado fresco, fruta de la huerta y el pan que hacen los panaderos del barrio."""
GERMAN_MAN_PAGE = """BESCHREIBUNG
ls listet Informationen über die Dateien auf, standardmäßig für das aktuelle Verzeichnis. Die
Einträge werden alphabetisch sortiert, wenn keine der Optionen -cftuvSUX oder --sort angegeben ist.
-a, --all
Einträge, die mit . beginnen, nicht ignorieren.
-l
ein langes Listenformat verwenden, das die Zugriffsrechte und die Größe der Datei zeigt."""
JAPANESE = "この町は川のそばにあり、春になると桜がとてもきれいです。多くの人が写真を撮りに来ますが、夜は静かになります。"
KOREAN = "이 도시는 바다 근처에 있으며 여름에는 많은 관광객이 찾아옵니다. 시장은 아침 일찍 문을 엽니다."
RUSSIAN = "Город расположен на берегу широкой реки. Летом сюда приезжает много туристов, а зимой улицы пустеют."


def make(step_cls, config, tmp_path: Path):
    step = step_cls(config)
    step.setup(StepContext(base_dir=tmp_path, work_dir=tmp_path))
    return step


def chunks(text: str, size: int = 2000, limit: int = 60) -> list[str]:
    """Pieces of about ``size`` characters cut at line ends, the first ``limit`` of them."""
    out, current, n = [], [], 0
    for line in text.split("\n"):
        current.append(line)
        n += len(line) + 1
        if n >= size:
            out.append("\n".join(current))
            current, n = [], 0
    return out[:limit]


def stdlib_samples(count: int = 40) -> tuple[list[str], list[str]]:
    """Source files of the standard library (json/__init__.py first) and their docstrings as prose."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 2000)
    files = [Path(inspect.getsourcefile(json))] + random.Random(0).sample(files, count - 1)
    sources, docstrings = [], []
    for path in files:
        source = path.read_text(encoding="utf-8", errors="replace")
        sources.append(source)
        tree = ast.parse(source)
        docs = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        prose = "\n\n".join(d for d in docs if d and len(d) > 80)
        if len(prose) > 300:
            docstrings.append(prose)
    return sources, docstrings


# --- langid ---------------------------------------------------------------------------------------
def test_langid_on_real_samples_prints_confusion(shared_data):
    pretrain = shared_data / "pretrain"
    sources, docstrings = stdlib_samples()
    cases = {
        "zh_novel": ("zh", chunks((pretrain / "zh_novel.txt").read_text(encoding="utf-8"))),
        "zh_medical": ("zh", chunks((pretrain / "zh_medical.txt").read_text(encoding="utf-8"))),
        "en_history": ("en", chunks((pretrain / "en_history.txt").read_text(encoding="utf-8"))),
        "en_shakespeare": ("en", chunks((pretrain / "en_shakespeare.txt").read_text(encoding="utf-8"))),
        "stdlib source": ("code", sources),
        "stdlib docstrings": ("en", docstrings),
        "de/fr/es/ja/ko/ru": ("other", [GERMAN, FRENCH, SPANISH, GERMAN_MAN_PAGE, JAPANESE, KOREAN, RUSSIAN]),
    }
    confusion = {}
    for name, (expected, docs) in cases.items():
        assert docs, name
        confusion[name] = collections.Counter(identify_language(d)[0] for d in docs)
    print("\nlangid confusion (rows: samples, columns: predicted)")
    print(f"{'':20s} expect " + " ".join(f"{lang:>6s}" for lang in ("zh", "en", "code", "other")))
    for name, (expected, docs) in cases.items():
        print(f"{name:20s} {expected:>6s} " + " ".join(f"{confusion[name][lang]:6d}" for lang in ("zh", "en", "code", "other")))
    for name, (expected, docs) in cases.items():
        assert confusion[name][expected] == len(docs), (name, confusion[name])


def test_python_source_is_code_and_its_docstring_is_english():
    assert identify_language(inspect.getsource(json))[0] == "code"
    assert identify_language(json.__doc__)[0] == "en"
    assert identify_language(json.dumps.__doc__)[0] == "en"
    snippet = "import os\n\ndef main(argv):\n    path = os.path.join(argv[0], 'x')\n    return path\n"
    assert identify_language(snippet) == ("code", 1.0)
    js = "function add(a, b) {\n  const total = a + b;\n  return total;\n}\nconsole.log(add(1, 2));\n"
    assert identify_language(js)[0] == "code"


def test_mixed_chinese_and_english():
    mostly_chinese = "我们用 Python 和 PyTorch 训练一个小模型，数据来自 Common Crawl，先做去重和过滤。" * 3
    assert identify_language(mostly_chinese)[0] == "zh"
    mostly_english = "The character 中 means middle, and 国 means country; together they name China. " * 3
    assert identify_language(mostly_english)[0] == "en"
    code_with_chinese_comments = "# 读取配置\nimport json\n\ndef load(path):\n    # 打开文件\n    with open(path) as f:\n        return json.load(f)\n"
    assert identify_language(code_with_chinese_comments)[0] == "code"


def test_hanja_korean_and_rare_han():
    # Korean with many hanja is not Chinese: Hangul counts with kana (text.KANA_HANGUL_CHARS).
    hanja = "大韓民國은 民主共和國이다. 大韓民國의 主權은 國民에게 있고, 모든 權力은 國民으로부터 나온다. " * 3
    assert identify_language(hanja)[0] == "other"
    # Extension B+ ideographs (plane 2) are Han.
    assert identify_language("𠀀𠀁𠀂𠀃𠀄𠀅𠀆𠀇𠀈𠀉 is rare" * 3)[0] == "zh"


def test_langid_step_tags_and_drops(tmp_path):
    docs = [Document("zh", "今天天气很好，我们去公园散步吧。"), Document("de", GERMAN), Document("py", inspect.getsource(json))]
    step = make(LangId, LangIdConfig(allowed=["zh", "en"]), tmp_path)
    out = step.process_batch(docs)
    assert out[0].metadata["lang"] == "zh" and 0.0 <= out[0].metadata["lang_score"] <= 1.0
    assert out[1] == Drop("lang_other") and out[2] == Drop("lang_code")
    assert step.counters == {"zh": 1, "other": 1, "code": 1}
    for allowed in ([], None):
        tagger = make(LangId, LangIdConfig(allowed=allowed), tmp_path)
        tagged = tagger.process_batch([Document("de", GERMAN)])
        assert tagged[0].metadata["lang"] == "other" and 0.0 <= tagged[0].metadata["lang_score"] <= 1.0
    assert identify_language("") == ("other", 1.0) and identify_language("12345 678")[0] == "other"


@pytest.mark.parametrize(
    "config, field",
    [({"allowed": ["fr"]}, "allowed"), ({"zh_min_cjk_ratio": 1.5}, "zh_min_cjk_ratio"), ({"code_min_lines": 0}, "code_min_lines"), ({"sample_chars": -1}, "sample_chars")],
)
def test_langid_bad_config_names_the_field(config, field):
    with pytest.raises(ValueError, match=field):
        LangIdConfig(**config)


# --- unsafe_filter --------------------------------------------------------------------------------
def test_shipped_word_lists_parse():
    for name in ("unsafe_en", "unsafe_zh"):
        terms = read_wordlist(WORDLIST_DIR / f"{name}.txt")
        assert len(terms) > 100 and len(set(terms)) == len(terms), name


def test_unsafe_filter_drops_dense_toxic_text_only(tmp_path):
    step = make(UnsafeFilter, UnsafeFilterConfig(), tmp_path)
    toxic_en = Document("en", "Fuck this, you stupid motherfucker. What a shitty, fucking day. Total bullshit.")
    toxic_zh = Document("zh", "你这个傻逼，操你妈，草泥马，滚！")
    clean = Document("ok", "Scunthorpe is a town; the assassin drank a cocktail with shiitake, then went to class.")
    swearing_novel = Document("novel", ("He walked home slowly through the rain and thought about the letter. " * 40) + "Shit, he said.")
    out = step.process_batch([toxic_en, toxic_zh, clean, swearing_novel])
    assert out[0] == Drop("unsafe") and out[1] == Drop("unsafe")
    assert out[2] is clean and out[3] is swearing_novel
    assert step.counters["matches_unsafe_en"] == 5 + 1 and step.counters["matches_unsafe_zh"] == 3
    # two matches are below min_matches however short the document
    assert step.process(Document("two", "fuck, shit")).text == "fuck, shit"


def test_unsafe_filter_matching_rules(tmp_path):
    step = make(UnsafeFilter, UnsafeFilterConfig(action="flag", min_matches=1, max_per_1000_words=0), tmp_path)

    def terms(text: str) -> int:
        return step.process(Document("x", text)).metadata["unsafe_terms"]

    assert terms("FUCKING hell, Fucked up") == 2  # case-insensitive, "*" continues the word
    assert terms("a blow   job and a blow\njob") == 2  # spaces in a term match any whitespace
    assert terms("卧槽傻逼fuck你") == 2  # Chinese by substring; Latin bounded by ASCII letters only
    assert terms("Scunthorpe, assassin, cocktail, shiitake, pornography") == 0
    assert terms("他在操作机器，今日你来，妈妈的手") == 0  # 操/日你/妈的 are not listed


def test_unsafe_filter_flag_mode_and_extra_lists(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "spam.txt").write_text("# casino spam\nfree spins\njackpot*  # any continuation\n", encoding="utf-8")
    config = UnsafeFilterConfig(wordlists=[], extra_word_files=["lists/spam.txt"], extra_words=["赌场"], action="flag")
    step = make(UnsafeFilter, config, tmp_path)
    doc = step.process(Document("s", "FREE SPINS! Jackpots! 网上赌场 free spins"))
    assert doc.metadata == {"unsafe_terms": 4, "unsafe_score": 444.444, "unsafe": True}  # 4 in 9 words
    assert step.counters == {"matches_spam": 3, "matches_extra_words": 1}
    clean = step.process(Document("c", "a quiet day"))
    assert clean.metadata == {"unsafe_terms": 0, "unsafe_score": 0.0, "unsafe": False}


def test_unsafe_filter_errors(tmp_path):
    with pytest.raises(ValueError, match="wordlists"):
        UnsafeFilterConfig(wordlists=["no_such_list"])
    with pytest.raises(ValueError, match="action"):
        UnsafeFilterConfig(action="delete")
    (tmp_path / "bad.txt").write_text("ok\nbad*term\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:2"):
        make(UnsafeFilter, UnsafeFilterConfig(extra_word_files=["bad.txt"]), tmp_path)


def test_unsafe_filter_keeps_real_literature(tmp_path, shared_data):
    step = make(UnsafeFilter, UnsafeFilterConfig(), tmp_path)
    for name, separator in [("zh_novel.txt", "\n"), ("en_shakespeare.txt", "\n\n")]:
        text = (shared_data / "pretrain" / name).read_text(encoding="utf-8")
        docs = [Document(str(i), p) for i, p in enumerate(text.split(separator)) if p.strip()]
        dropped = sum(isinstance(o, Drop) for o in step.process_batch(docs))
        print(f"\nunsafe_filter on {name}: {dropped} of {len(docs)} paragraphs dropped")
        assert dropped == 0
        assert step.process(Document("whole", text)).text == text


# --- pii ------------------------------------------------------------------------------------------
def id_number(first17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, weights)) % 11]


def test_id_number_checksum_and_birth_date():
    good = id_number("11010519491231002")
    assert good == "11010519491231002X" and valid_id_number(good) and valid_id_number(good.lower())
    assert not valid_id_number(good[:-1] + "1")  # wrong check digit
    assert not valid_id_number(id_number("11010519490230002"))  # 30 February
    assert not valid_id_number(id_number("11010529990101002"))  # born in the future


POSITIVE = [
    ("邮箱 zhang.san@example.com。", "邮箱 <EMAIL>。", "email"),
    ("write to li_si+tag@mail.qq.com.cn, please", "write to <EMAIL>, please", "email"),
    ("手机13812345678，谢谢", "手机<PHONE>，谢谢", "phone"),
    ("call +86 138-1234-5678 now", "call <PHONE> now", "phone"),
    ("电话 010-12345678 或（0755）1234567", "电话 <PHONE> 或<PHONE>", "phone"),
    ("UK office: +44 20 7946 0958.", "UK office: <PHONE>.", "phone"),
    ("Call (415) 555-2671 or 415-555-2671 or 1-800-555-0199.", "Call <PHONE> or <PHONE> or <PHONE>.", "phone"),
    (f"身份证号{id_number('44030419900307123')}。", "身份证号<ID_NUMBER>。", "id_number"),
    ("server 192.168.1.10 and 58.215.3.77.", "server <IP> and <IP>.", "ip"),
    ("route 10.1.2.3/32 via gateway", "route <IP>/32 via gateway", "ip"),
    ("ping 8.8.8.8", "ping <IP>", "ip"),
    ("IPv6 2400:cb00:2048:1::c629:d7a2 here", "IPv6 <IP> here", "ip"),
]
NEGATIVE = [
    "日期 2023-10-01，2023年10月1日，年份 1998，时间 12:30:45",
    "价格 ¥12,345.67，$1,234,567.89，订单号 20231001123456789，ISBN 978-7-111-12345-6",
    "π = 3.14159265358979, e = 2.718281828459045, 1234567 people",
    f"错误的身份证 {id_number('11010519491231002')[:-1]}1，随机 123456789012345678",
    "Python 3.10.4.1, version 1.2.3.4, v10.0.0.1, OID 1.3.6.1.4.1, 1.2.3, 256.1.1.1, 01.02.03.04, Section 4.1.2.4",
    "localhost 127.0.0.1, mask 255.255.255.0, any 0.0.0.0, docs 192.0.2.1 and 2001:db8::1:2:3, multicast 239.1.2.3",
    "networks 10.0.0.0/16 and 172.16.0.0/12, libtix8.4.3.6.so, 4.3.2.1.in-addr.arpa",
    "C++ std::vector and a::b, loopback ::1, fe80::1, decorator @property, user@localhost",
    "range 100-200-3000 and 555-123.4567",
]


@pytest.mark.parametrize("text, expected, kind", POSITIVE)
def test_pii_redacts(tmp_path, text, expected, kind):
    step = make(Pii, PiiConfig(), tmp_path)
    assert step.process(Document("p", text)).text == expected
    assert set(step.counters) == {kind}


@pytest.mark.parametrize("text", NEGATIVE)
def test_pii_leaves_lookalikes_alone(tmp_path, text):
    step = make(Pii, PiiConfig(), tmp_path)
    assert step.redact(text) is text and not step.counters


def test_pii_switches_and_replacements(tmp_path):
    text = f"a@b.org 13812345678 {id_number('11010519491231002')} 10.1.2.3"
    step = make(Pii, PiiConfig(phone=False, ip=False, replacements={"email": "[email]"}), tmp_path)
    assert step.redact(text) == "[email] 13812345678 <ID_NUMBER> 10.1.2.3"
    assert step.counters == {"email": 1, "id_number": 1}
    with pytest.raises(ValueError, match="replacements"):
        PiiConfig(replacements={"passport": "<P>"})


def test_pii_finds_nothing_in_real_samples(tmp_path, shared_data):
    step = make(Pii, PiiConfig(), tmp_path)
    for path in sorted((shared_data / "pretrain").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        assert step.redact(text) is text, path.name
