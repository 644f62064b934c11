"""The word problems behind ``lmforge synth math``: scenarios, their steps and their wordings.

A ``Scenario`` is one kind of problem at one difficulty level: a sampler that draws its numbers,
the computation as ``Step``s (each one operation on numbers drawn, literals or earlier results)
and several question wordings per language. ``lmforge.synth.math`` fills in names, items and
units, computes every step exactly and renders the solution; nothing here computes anything.

Levels: 1 = one +/− on small numbers (no labels: the most regular text, for tiny models);
2 = one step with larger numbers, ×/÷, a fraction or percentage of a quantity, a unit conversion;
3 = two steps; 4 = three or four steps mixing operations.

Slots usable in wordings and labels: ``{name}``, ``{name2}`` (two different people), ``{items}``
(English plural noun), ``{item}`` / ``{cl}`` (Chinese noun and its measure word), ``{cur}``
(dollars / 元), ``{big}`` / ``{small}`` (a unit pair, for scenarios with ``units``), and the
scenario's numbers by name. A step argument names a number (``"a"``), a number read as a
percentage (``"p%"``), an earlier step (``"#0"``) or is a literal (``"1"``, ``"3"``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

NAMES = {
    "en": ["Tom", "Amy", "Lily", "Ben", "Sara", "Leo", "Mia", "Jack", "Emma", "Noah", "Grace", "Sam"],
    "zh": ["小明", "小红", "小刚", "小丽", "小华", "小芳", "小军", "小雨", "小杰", "小美", "小林", "小文"],
}

# (English plural, Chinese noun, Chinese measure word)
ITEMS = [
    ("apples", "苹果", "个"), ("pencils", "铅笔", "支"), ("books", "书", "本"), ("stickers", "贴纸", "张"),
    ("marbles", "弹珠", "颗"), ("cookies", "饼干", "块"), ("stamps", "邮票", "张"), ("cards", "卡片", "张"),
    ("balloons", "气球", "个"), ("eggs", "鸡蛋", "个"), ("flowers", "花", "朵"), ("candies", "糖果", "颗"),
    ("toy cars", "玩具车", "辆"), ("shells", "贝壳", "个"), ("oranges", "橙子", "个"),
]  # fmt: skip

CURRENCY = {"en": "dollars", "zh": "元"}

# name -> (factor, English big, English small, Chinese big, Chinese small)
UNIT_PAIRS = {
    "km-m": (1000, "kilometers", "meters", "千米", "米"),
    "m-cm": (100, "meters", "centimeters", "米", "厘米"),
    "kg-g": (1000, "kilograms", "grams", "千克", "克"),
    "h-min": (60, "hours", "minutes", "小时", "分钟"),
    "min-s": (60, "minutes", "seconds", "分钟", "秒"),
    "L-mL": (1000, "liters", "milliliters", "升", "毫升"),
}


@dataclass(frozen=True)
class Step:
    op: str  # "+", "-", "×", "÷"
    left: str
    right: str
    label: dict[str, str] = field(default_factory=dict)  # per language; none: the bare equation


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # arithmetic | fraction | percent | unit | multistep
    level: int
    sample: Callable[[random.Random, int], dict]  # (rng, unit factor or 1) -> numbers by slot name
    steps: tuple[Step, ...]
    questions: dict[str, tuple[str, ...]]  # language -> wordings
    style: str = "decimal"  # how non-integers are written: "decimal" (2.5) or "fraction" (5/2)
    units: tuple[str, ...] = ()  # UNIT_PAIRS keys to draw {big}/{small} and the factor from


def S(op: str, left: str, right: str, en: str = "", zh: str = "") -> Step:
    return Step(op, left, right, {"en": en, "zh": zh} if en or zh else {})


# ---- samplers -------------------------------------------------------------------------------


def _proper_fraction(rng: random.Random, max_den: int = 10) -> Fraction:
    q = rng.randint(2, max_den)
    p = rng.choice([p for p in range(1, q) if math.gcd(p, q) == 1])
    return Fraction(p, q)


def _two_fractions_below_one(rng: random.Random) -> tuple[Fraction, Fraction]:
    while True:
        f1, f2 = _proper_fraction(rng, 8), _proper_fraction(rng, 8)
        if f1 + f2 < 1:
            return f1, f2


def _percent_base(rng: random.Random, percents: tuple[int, ...], largest: int) -> tuple[int, int]:
    """A percentage and a whole number whose percentage is whole."""
    p = rng.choice(percents)
    base = 100 // math.gcd(p, 100)
    return p, base * rng.randint(1, max(1, largest // base))


def _add(lo: int, hi: int):
    return lambda rng, k: {"a": rng.randint(lo, hi), "b": rng.randint(lo, hi)}


def _sub(lo: int, hi: int):
    def sample(rng, k):
        a = rng.randint(lo + 1, hi)
        return {"a": a, "b": rng.randint(lo, a - 1)}

    return sample


def _div(rng, k):
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    return {"t": a * b, "a": a}


def _frac_of(rng, k):
    f = _proper_fraction(rng)
    return {"f": f, "n": f.denominator * rng.randint(1, 10)}


def _frac_left(rng, k):
    f1, f2 = _two_fractions_below_one(rng)
    return {"f1": f1, "f2": f2}


def _frac_tank(rng, k):
    f1, f2 = _two_fractions_below_one(rng)
    return {"f1": f1, "f2": f2, "n": (1 - f1 - f2).denominator * rng.randint(1, 8)}


def _to_small(rng, k):
    a = rng.randint(2, 20)
    return {"a": Fraction(2 * a + 1, 2) if k % 2 == 0 and rng.random() < 0.3 else a, "k": k}


def _share(rng, k):
    kids, each = rng.randint(2, 6), rng.randint(2, 10)
    a = rng.randint(1, kids * each - 1)
    return {"a": a, "b": kids * each - a, "k": kids}


def _change(rng, k):
    n, p = rng.randint(2, 9), rng.randint(2, 12)
    return {"k": n, "p": p, "N": rng.choice([N for N in (20, 50, 100, 200) if N > n * p][:2])}


def _bulk_discount(rng, k):
    while True:
        n, price, p = rng.randint(2, 6), rng.randint(5, 60), rng.choice((10, 20, 25, 50))
        if n * price * p % 100 == 0:
            return {"k": n, "price": price, "p": p}


def _shopping(rng, k):
    a, p, b, q = rng.randint(2, 6), rng.randint(2, 15), rng.randint(2, 6), rng.randint(2, 15)
    return {"a": a, "p": p, "b": b, "q": q, "N": rng.choice([N for N in (50, 100, 200) if N > a * p + b * q])}


def _average(rng, k):
    a, b = rng.randint(60, 100), rng.randint(60, 100)
    c = rng.choice([c for c in range(60, 101) if (a + b + c) % 3 == 0])
    return {"a": a, "b": b, "c": c}


def _unit_total(rng, k):
    return {"v": rng.randint(2, 9), "d": rng.randint(2, 7), "b": rng.randint(1, k - 1), "k": k}


# ---- wordings -------------------------------------------------------------------------------

ADD_Q = {
    "en": (
        "{name} has {a} {items}. {name} gets {b} more. How many {items} does {name} have now?",
        "There are {a} {items} in a box. {name} puts in {b} more. How many {items} are in the box now?",
        "{name} had {a} {items} and found {b} more. How many {items} does {name} have?",
        "{name} has {a} {items} and {name2} has {b} {items}. How many {items} do they have together?",
        "What is {a} plus {b}?",
        "{name} bought {a} {items} in the morning and {b} {items} in the afternoon. How many {items} did {name} buy in all?",
        "A basket holds {a} {items}. {name2} adds {b} more. How many {items} are in the basket now?",
    ),
    "zh": (
        "{name}有{a}{cl}{item}，又得到了{b}{cl}。{name}现在有多少{cl}{item}？",
        "盒子里有{a}{cl}{item}，{name}又放进去{b}{cl}。盒子里现在有多少{cl}{item}？",
        "{name}原来有{a}{cl}{item}，又找到了{b}{cl}。{name}一共有多少{cl}{item}？",
        "{name}有{a}{cl}{item}，{name2}有{b}{cl}{item}。他们一共有多少{cl}{item}？",
        "{a}加{b}等于多少？",
        "{name}上午买了{a}{cl}{item}，下午又买了{b}{cl}。{name}一共买了多少{cl}{item}？",
        "篮子里有{a}{cl}{item}，{name2}又放进了{b}{cl}。篮子里现在有多少{cl}{item}？",
    ),
}

SUB_Q = {
    "en": (
        "{name} has {a} {items} and gives {b} to {name2}. How many {items} does {name} have left?",
        "There are {a} {items} on the table. {name} takes away {b}. How many {items} are left on the table?",
        "{name} had {a} {items} and lost {b}. How many {items} does {name} have now?",
        "What is {a} minus {b}?",
        "{name} has {a} {items}. {name2} has {b} {items}. How many more {items} does {name} have than {name2}?",
        "{name} bought {a} {items} and used {b} of them. How many {items} are left?",
        "A shop had {a} {items} and sold {b}. How many {items} does the shop have now?",
    ),
    "zh": (
        "{name}有{a}{cl}{item}，送给{name2}{b}{cl}。{name}还剩多少{cl}{item}？",
        "桌子上有{a}{cl}{item}，{name}拿走了{b}{cl}。桌子上还剩多少{cl}{item}？",
        "{name}原来有{a}{cl}{item}，丢了{b}{cl}。{name}现在有多少{cl}{item}？",
        "{a}减{b}等于多少？",
        "{name}有{a}{cl}{item}，{name2}有{b}{cl}{item}。{name}比{name2}多多少{cl}{item}？",
        "{name}买了{a}{cl}{item}，用掉了{b}{cl}。还剩多少{cl}{item}？",
        "商店里有{a}{cl}{item}，卖出了{b}{cl}。商店里现在有多少{cl}{item}？",
    ),
}

MUL_Q = {
    "en": (
        "{name} has {a} boxes with {b} {items} in each box. How many {items} does {name} have?",
        "There are {a} bags, and each bag holds {b} {items}. How many {items} are there in total?",
        "{name} buys {a} packs of {items}. Each pack has {b} {items}. How many {items} does {name} buy?",
        "What is {a} times {b}?",
        "Each of {a} children gets {b} {items}. How many {items} are given out?",
    ),
    "zh": (
        "{name}有{a}个盒子，每个盒子里有{b}{cl}{item}。{name}一共有多少{cl}{item}？",
        "有{a}个袋子，每个袋子装{b}{cl}{item}。一共有多少{cl}{item}？",
        "{name}买了{a}包{item}，每包{b}{cl}。{name}一共买了多少{cl}{item}？",
        "{a}乘以{b}等于多少？",
        "{a}个小朋友每人分到{b}{cl}{item}。一共分出了多少{cl}{item}？",
    ),
}

DIV_Q = {
    "en": (
        "{name} shares {t} {items} equally among {a} friends. How many {items} does each friend get?",
        "{t} {items} are packed equally into {a} boxes. How many {items} are in each box?",
        "What is {t} divided by {a}?",
        "{name} puts {t} {items} into {a} equal rows. How many {items} are in each row?",
    ),
    "zh": (
        "{name}把{t}{cl}{item}平均分给{a}个朋友，每个朋友分到多少{cl}{item}？",
        "{t}{cl}{item}平均装进{a}个盒子，每个盒子装多少{cl}{item}？",
        "{t}除以{a}等于多少？",
        "{name}把{t}{cl}{item}平均摆成{a}排，每排有多少{cl}{item}？",
    ),
}

SCENARIOS: list[Scenario] = [
    # ---- level 1: one +/− on small numbers, a bare equation
    Scenario("add_small", "arithmetic", 1, _add(2, 20), (S("+", "a", "b"),), ADD_Q),
    Scenario("sub_small", "arithmetic", 1, _sub(2, 20), (S("-", "a", "b"),), SUB_Q),
    # ---- level 2: one step
    Scenario("add", "arithmetic", 2, _add(10, 99), (S("+", "a", "b"),), ADD_Q),
    Scenario("sub", "arithmetic", 2, _sub(10, 99), (S("-", "a", "b"),), SUB_Q),
    Scenario("mul", "arithmetic", 2, lambda rng, k: {"a": rng.randint(2, 9), "b": rng.randint(2, 12)}, (S("×", "a", "b"),), MUL_Q),
    Scenario("div", "arithmetic", 2, _div, (S("÷", "t", "a"),), DIV_Q),
    Scenario("fraction_of", "fraction", 2, _frac_of, (S("×", "n", "f"),), {
        "en": (
            "There are {n} students in a class, and {f} of them are girls. How many girls are there?",
            "{name} has {n} {items} and gives away {f} of them. How many {items} does {name} give away?",
            "What is {f} of {n}?",
            "A rope is {n} meters long. {name} cuts off {f} of it. How many meters long is the piece that was cut off?",
        ),
        "zh": (
            "班上有{n}名学生，其中{f}是女生。女生有多少名？",
            "{name}有{n}{cl}{item}，送出了其中的{f}。{name}送出了多少{cl}{item}？",
            "{n}的{f}是多少？",
            "一根绳子长{n}米，{name}剪下了它的{f}。剪下的部分长多少米？",
        ),
    }, style="fraction"),
    Scenario("percent_of", "percent", 2, lambda rng, k: dict(zip("pn", _percent_base(rng, (5, 10, 20, 25, 30, 40, 50, 60, 75, 80), 500))), (S("×", "n", "p%"),), {
        "en": (
            "What is {p}% of {n}?",
            "A school has {n} students, and {p}% of them walk to school. How many students walk to school?",
            "{name} has {n} {items}. {p}% of them are red. How many red {items} does {name} have?",
            "A farm has {n} animals, and {p}% of them are sheep. How many sheep are on the farm?",
        ),
        "zh": (
            "{n}的{p}%是多少？",
            "学校有{n}名学生，其中{p}%步行上学。步行上学的学生有多少名？",
            "{name}有{n}{cl}{item}，其中{p}%是红色的。红色的{item}有多少{cl}？",
            "农场有{n}只动物，其中{p}%是羊。农场里有多少只羊？",
        ),
    }),
    Scenario("to_smaller_unit", "unit", 2, _to_small, (S("×", "a", "k"),), {
        "en": (
            "How many {small} are there in {a} {big}?",
            "Convert {a} {big} to {small}.",
            "{a} {big} is how many {small}?",
            "{name} measured {a} {big}. How many {small} is that?",
        ),
        "zh": (
            "{a}{big}是多少{small}？",
            "把{a}{big}换算成{small}。",
            "{a}{big}等于多少{small}？",
            "{name}量得{a}{big}，合多少{small}？",
        ),
    }, units=tuple(UNIT_PAIRS)),
    Scenario("to_bigger_unit", "unit", 2, lambda rng, k: {"t": rng.randint(2, 20) * k, "k": k}, (S("÷", "t", "k"),), {
        "en": (
            "How many {big} are there in {t} {small}?",
            "Convert {t} {small} to {big}.",
            "{t} {small} is how many {big}?",
        ),
        "zh": (
            "{t}{small}是多少{big}？",
            "把{t}{small}换算成{big}。",
            "{t}{small}等于多少{big}？",
        ),
    }, units=tuple(UNIT_PAIRS)),
    # ---- level 3: two steps
    Scenario("buy_then_give", "arithmetic", 3, lambda rng, k: (lambda a, b: {"a": a, "b": b, "c": rng.randint(1, a + b - 1)})(rng.randint(10, 60), rng.randint(5, 40)), (
        S("+", "a", "b", en="{items} after buying", zh="买完后的{item}"),
        S("-", "#0", "c", en="{items} left", zh="剩下的{item}"),
    ), {
        "en": (
            "{name} has {a} {items}, buys {b} more, and then gives {c} to {name2}. How many {items} does {name} have now?",
            "There were {a} {items} in a shop. {b} more arrived, and then {c} were sold. How many {items} are in the shop now?",
            "{name} collected {a} {items} last week and {b} this week, then lost {c}. How many {items} are left?",
        ),
        "zh": (
            "{name}有{a}{cl}{item}，又买了{b}{cl}，然后送给{name2}{c}{cl}。{name}现在有多少{cl}{item}？",
            "商店里有{a}{cl}{item}，又运来了{b}{cl}，接着卖出了{c}{cl}。商店里现在有多少{cl}{item}？",
            "{name}上周收集了{a}{cl}{item}，这周又收集了{b}{cl}，后来丢了{c}{cl}。还剩多少{cl}{item}？",
        ),
    }),
    Scenario("packs_then_use", "arithmetic", 3, lambda rng, k: (lambda a, b: {"a": a, "b": b, "c": rng.randint(1, a * b - 1)})(rng.randint(2, 9), rng.randint(3, 12)), (
        S("×", "a", "b", en="{items} in the packs", zh="买到的{item}"),
        S("-", "#0", "c", en="{items} left", zh="剩下的{item}"),
    ), {
        "en": (
            "{name} buys {a} packs of {items} with {b} in each pack and uses {c} of them. How many {items} are left?",
            "There are {a} boxes with {b} {items} in each. {name} takes out {c}. How many {items} are still in the boxes?",
            "{name} has {a} bags of {items}, {b} in each bag, and gives {c} to {name2}. How many {items} does {name} have left?",
        ),
        "zh": (
            "{name}买了{a}包{item}，每包{b}{cl}，用掉了{c}{cl}。还剩多少{cl}{item}？",
            "有{a}个盒子，每个盒子里有{b}{cl}{item}。{name}拿出了{c}{cl}，盒子里还有多少{cl}{item}？",
            "{name}有{a}袋{item}，每袋{b}{cl}，送给{name2}{c}{cl}。{name}还剩多少{cl}{item}？",
        ),
    }),
    Scenario("pool_and_share", "arithmetic", 3, _share, (
        S("+", "a", "b", en="{items} in all", zh="{item}的总数"),
        S("÷", "#0", "k", en="{items} for each child", zh="每人分到的{item}"),
    ), {
        "en": (
            "{name} has {a} {items} and {name2} has {b}. They put them together and share them equally among {k} children. How many {items} does each child get?",
            "One box has {a} {items} and another has {b}. All of them are shared equally by {k} friends. How many {items} does each friend get?",
            "{name} picked {a} {items} and {name2} picked {b}. They split them equally into {k} bags. How many {items} go in each bag?",
        ),
        "zh": (
            "{name}有{a}{cl}{item}，{name2}有{b}{cl}。他们把{item}合在一起，平均分给{k}个小朋友。每个小朋友分到多少{cl}？",
            "一个盒子里有{a}{cl}{item}，另一个盒子里有{b}{cl}。这些{item}平均分给{k}个朋友，每人分到多少{cl}？",
            "{name}摘了{a}{cl}{item}，{name2}摘了{b}{cl}。他们把这些{item}平均装进{k}个袋子，每个袋子装多少{cl}？",
        ),
    }),
    Scenario("fraction_left", "fraction", 3, _frac_left, (
        S("+", "f1", "f2", en="eaten", zh="吃掉的部分"),
        S("-", "1", "#0", en="left", zh="剩下的部分"),
    ), {
        "en": (
            "{name} ate {f1} of a cake and {name2} ate {f2} of it. What fraction of the cake is left?",
            "{name} read {f1} of a book on Monday and {f2} of it on Tuesday. What fraction of the book is still unread?",
            "A garden is planted with {f1} roses and {f2} tulips. What fraction of the garden is left for other plants?",
        ),
        "zh": (
            "{name}吃了一个蛋糕的{f1}，{name2}吃了它的{f2}。蛋糕还剩几分之几？",
            "{name}星期一读了一本书的{f1}，星期二读了它的{f2}。这本书还有几分之几没读？",
            "一块菜地的{f1}种了玫瑰，{f2}种了郁金香。还剩这块地的几分之几可以种别的？",
        ),
    }, style="fraction"),
    Scenario("fraction_remaining", "fraction", 3, _frac_of, (
        S("×", "n", "f", en="given away", zh="送出的{item}"),
        S("-", "n", "#0", en="{items} left", zh="剩下的{item}"),
    ), {
        "en": (
            "{name} has {n} {items} and gives {f} of them to {name2}. How many {items} does {name} have left?",
            "A shop has {n} {items} and sells {f} of them. How many {items} are left?",
            "There are {n} {items} in a jar. {name} takes out {f} of them. How many {items} are still in the jar?",
        ),
        "zh": (
            "{name}有{n}{cl}{item}，把其中的{f}送给了{name2}。{name}还剩多少{cl}{item}？",
            "商店有{n}{cl}{item}，卖出了其中的{f}。还剩多少{cl}{item}？",
            "罐子里有{n}{cl}{item}，{name}拿出了其中的{f}。罐子里还有多少{cl}{item}？",
        ),
    }, style="fraction"),
    Scenario("discount", "percent", 3, lambda rng, k: dict(zip(("p", "price"), _percent_base(rng, (10, 20, 25, 30, 40, 50), 400))), (
        S("×", "price", "p%", en="discount", zh="优惠的钱"),
        S("-", "price", "#0", en="sale price", zh="打折后的价格"),
    ), {
        "en": (
            "A jacket costs {price} {cur}. It is on sale for {p}% off. What is the sale price in {cur}?",
            "A bike is priced at {price} {cur}, and the shop gives a {p}% discount. How many {cur} does the bike cost after the discount?",
            "{name} wants a game that costs {price} {cur}. Today it is {p}% off. How many {cur} does {name} pay?",
        ),
        "zh": (
            "一件外套原价{price}元，现在打折优惠{p}%。现在的售价是多少元？",
            "一辆自行车标价{price}元，商店优惠{p}%。优惠后这辆自行车多少元？",
            "{name}想买一个原价{price}元的游戏，今天优惠{p}%。{name}要付多少元？",
        ),
    }),
    Scenario("increase", "percent", 3, lambda rng, k: dict(zip("pn", _percent_base(rng, (5, 10, 20, 25, 50), 1000))), (
        S("×", "n", "p%", en="increase", zh="增加的数量"),
        S("+", "n", "#0", en="new number", zh="现在的数量"),
    ), {
        "en": (
            "A town had {n} people. The number grew by {p}%. How many people live in the town now?",
            "A library had {n} books and increased its collection by {p}%. How many books does it have now?",
            "{name} ran {n} meters last week and {p}% more this week. How many meters did {name} run this week?",
        ),
        "zh": (
            "一个小镇原有{n}人，人口增长了{p}%。现在小镇有多少人？",
            "图书馆原有{n}本书，藏书增加了{p}%。现在有多少本书？",
            "{name}上周跑了{n}米，这周比上周多跑{p}%。{name}这周跑了多少米？",
        ),
    }),
    Scenario("mixed_units", "unit", 3, lambda rng, k: {"a": rng.randint(1, 9), "b": rng.randint(1, k - 1), "k": k}, (
        S("×", "a", "k", en="{a} {big} in {small}", zh="{a}{big}换成{small}"),
        S("+", "#0", "b", en="total in {small}", zh="合计的{small}数"),
    ), {
        "en": (
            "How many {small} are there in {a} {big} and {b} {small}?",
            "Write {a} {big} {b} {small} in {small}.",
            "{name} measured {a} {big} and {b} {small}. How many {small} is that in all?",
        ),
        "zh": (
            "{a}{big}{b}{small}是多少{small}？",
            "把{a}{big}{b}{small}写成以{small}为单位的数。",
            "{name}量得{a}{big}{b}{small}，一共是多少{small}？",
        ),
    }, units=tuple(UNIT_PAIRS)),
    Scenario("change", "multistep", 3, _change, (
        S("×", "k", "p", en="cost", zh="花的钱"),
        S("-", "N", "#0", en="change", zh="找回的钱"),
    ), {
        "en": (
            "{name} buys {k} {items} at {p} {cur} each and pays with {N} {cur}. How many {cur} of change does {name} get?",
            "Each of {k} {items} costs {p} {cur}. {name} pays {N} {cur} for all of them. How much change in {cur} does {name} get back?",
            "{name} has {N} {cur} and buys {k} {items} that cost {p} {cur} each. How many {cur} are left?",
        ),
        "zh": (
            "{name}买了{k}{cl}{item}，每{cl}{p}元，付了{N}元。应找回多少元？",
            "每{cl}{item}{p}元，{name}买了{k}{cl}，给了售货员{N}元。能找回多少元？",
            "{name}有{N}元，买了{k}{cl}每{cl}{p}元的{item}。还剩多少元？",
        ),
    }),
    Scenario("savings", "multistep", 3, lambda rng, k: (lambda s, w: {"s": s, "w": w, "c": rng.randint(1, s * w - 1)})(rng.randint(2, 20), rng.randint(2, 12)), (
        S("×", "s", "w", en="saved", zh="存下的钱"),
        S("-", "#0", "c", en="left", zh="剩下的钱"),
    ), {
        "en": (
            "{name} saves {s} {cur} every week for {w} weeks and then spends {c} {cur} on a gift. How many {cur} are left?",
            "Every week {name} puts {s} {cur} in a piggy bank. After {w} weeks, {name} takes out {c} {cur}. How many {cur} are in the piggy bank?",
            "{name} earns {s} {cur} a week for {w} weeks and buys a book for {c} {cur}. How many {cur} does {name} have left?",
        ),
        "zh": (
            "{name}每周存{s}元，存了{w}周，然后花{c}元买了一份礼物。还剩多少元？",
            "{name}每周往存钱罐里放{s}元。{w}周后，{name}取出了{c}元。存钱罐里还有多少元？",
            "{name}每周挣{s}元，挣了{w}周，买书花了{c}元。{name}还剩多少元？",
        ),
    }),
]  # fmt: skip

_BOXES_BAGS_STEPS = (
    S("×", "a", "b", en="{items} in the boxes", zh="盒子里的{item}"),
    S("×", "c", "d", en="{items} in the bags", zh="袋子里的{item}"),
    S("+", "#0", "#1", en="{items} in all", zh="{item}的总数"),
    S("-", "#2", "e", en="{items} left", zh="剩下的{item}"),
)


def _boxes_bags(rng, k):
    a, b, c, d = rng.randint(2, 6), rng.randint(3, 12), rng.randint(2, 6), rng.randint(3, 12)
    return {"a": a, "b": b, "c": c, "d": d, "e": rng.randint(1, a * b + c * d - 1)}


def _unit_story(name: str, unit: str, en: tuple[str, ...], zh: tuple[str, ...]) -> Scenario:
    steps = (
        S("×", "v", "d", en="total in {big}", zh="一共的{big}数"),
        S("×", "#0", "k", en="in {small}", zh="换成{small}"),
        S("+", "#1", "b", en="total in {small}", zh="合计的{small}数"),
    )
    return Scenario(name, "unit", 4, _unit_total, steps, {"en": en, "zh": zh}, units=(unit,))


SCENARIOS += [
    # ---- level 4: three or four steps
    Scenario("boxes_and_bags", "arithmetic", 4, _boxes_bags, _BOXES_BAGS_STEPS, {
        "en": (
            "{name} has {a} boxes with {b} {items} each and {c} bags with {d} {items} each. {name} gives {e} {items} to {name2}. How many {items} does {name} have left?",
            "A shop gets {a} boxes of {items} with {b} in each box and {c} bags with {d} in each bag. It sells {e} {items}. How many {items} are left?",
            "There are {a} boxes holding {b} {items} each and {c} bags holding {d} {items} each. {e} {items} are used. How many {items} remain?",
        ),
        "zh": (
            "{name}有{a}盒{item}，每盒{b}{cl}，还有{c}袋{item}，每袋{d}{cl}。{name}送给{name2}{e}{cl}，还剩多少{cl}{item}？",
            "商店运来{a}箱{item}，每箱{b}{cl}，又运来{c}袋，每袋{d}{cl}。卖出了{e}{cl}，还剩多少{cl}{item}？",
            "有{a}个盒子，每盒装{b}{cl}{item}，还有{c}个袋子，每袋装{d}{cl}{item}。用掉了{e}{cl}，还剩多少{cl}{item}？",
        ),
    }),
    Scenario("fraction_tank", "fraction", 4, _frac_tank, (
        S("+", "f1", "f2", en="fraction used", zh="用掉的部分"),
        S("-", "1", "#0", en="fraction left", zh="剩下的部分"),
        S("×", "n", "#1", en="amount left", zh="剩下的量"),
    ), {
        "en": (
            "A tank holds {n} liters of water. {f1} of the water is used on Monday and {f2} of it on Tuesday. How many liters are left?",
            "A book has {n} pages. {name} reads {f1} of the book on the first day and {f2} of it on the second day. How many pages are left to read?",
            "{name} has {n} {cur}, spends {f1} of it on food and {f2} of it on books. How many {cur} are left?",
        ),
        "zh": (
            "一个水箱装有{n}升水，星期一用了全部的{f1}，星期二用了全部的{f2}。还剩多少升水？",
            "一本书有{n}页，{name}第一天读了全书的{f1}，第二天读了全书的{f2}。还剩多少页没读？",
            "{name}有{n}元，把其中的{f1}用来买食物，{f2}用来买书。还剩多少元？",
        ),
    }, style="fraction"),
    Scenario("bulk_discount", "percent", 4, _bulk_discount, (
        S("×", "k", "price", en="full price", zh="原价总额"),
        S("×", "#0", "p%", en="discount", zh="优惠的钱"),
        S("-", "#0", "#1", en="price to pay", zh="实付的钱"),
    ), {
        "en": (
            "{name} buys {k} {items} at {price} {cur} each and gets {p}% off the total. How many {cur} does {name} pay?",
            "A shop sells {items} for {price} {cur} each. If you buy {k}, you get {p}% off. How much do {k} {items} cost, in {cur}?",
            "{k} {items} cost {price} {cur} each. With a {p}% discount on the whole order, how many {cur} does the order cost?",
        ),
        "zh": (
            "{name}买了{k}{cl}{item}，每{cl}{price}元，总价优惠{p}%。{name}要付多少元？",
            "商店里{item}每{cl}{price}元，买{k}{cl}可以优惠{p}%。买{k}{cl}{item}要多少元？",
            "{k}{cl}{item}每{cl}{price}元，整单优惠{p}%，这一单要多少元？",
        ),
    }),
    _unit_story("walk_distance", "km-m", (
        "{name} walks {v} kilometers every day for {d} days, and then {b} meters more. How many meters does {name} walk in all?",
        "A runner covers {v} kilometers a day for {d} days plus {b} meters on the last evening. How many meters is that in total?",
    ), (
        "{name}每天走{v}千米，走了{d}天，之后又走了{b}米。{name}一共走了多少米？",
        "一名跑步者每天跑{v}千米，跑了{d}天，最后一晚又跑了{b}米。一共跑了多少米？",
    )),
    _unit_story("flour_weight", "kg-g", (
        "A baker buys {d} bags of flour that weigh {v} kilograms each, plus {b} grams more. How many grams of flour is that?",
        "{name} packs {d} boxes of {v} kilograms each and one small bag of {b} grams. What is the total weight in grams?",
    ), (
        "面包师买了{d}袋面粉，每袋{v}千克，又买了{b}克。一共是多少克面粉？",
        "{name}装了{d}箱货物，每箱{v}千克，还有一小袋{b}克。总重量是多少克？",
    )),
    _unit_story("water_volume", "L-mL", (
        "{name} drinks {v} liters of water a day for {d} days and {b} milliliters more on the last day. How many milliliters is that in total?",
        "A café uses {d} jugs holding {v} liters each and {b} milliliters from another bottle. How many milliliters does it use?",
    ), (
        "{name}每天喝{v}升水，喝了{d}天，最后一天又多喝了{b}毫升。一共喝了多少毫升水？",
        "一家咖啡店用了{d}壶水，每壶{v}升，又用了另一瓶里的{b}毫升。一共用了多少毫升水？",
    )),
    _unit_story("practice_time", "h-min", (
        "{name} practices the piano {v} hours a day for {d} days and {b} minutes more on Sunday. How many minutes is that in all?",
        "A team trains {v} hours each day for {d} days, plus a {b}-minute warm-up at the end. How many minutes do they train in total?",
    ), (
        "{name}每天练琴{v}小时，练了{d}天，星期天又多练了{b}分钟。一共练了多少分钟？",
        "一支球队每天训练{v}小时，训练了{d}天，最后又做了{b}分钟热身。一共训练了多少分钟？",
    )),
    Scenario("shopping", "multistep", 4, _shopping, (
        S("×", "a", "p", en="notebooks", zh="笔记本的钱"),
        S("×", "b", "q", en="pens", zh="钢笔的钱"),
        S("+", "#0", "#1", en="total cost", zh="一共花的钱"),
        S("-", "N", "#2", en="change", zh="找回的钱"),
    ), {
        "en": (
            "{name} buys {a} notebooks at {p} {cur} each and {b} pens at {q} {cur} each, and pays with {N} {cur}. How many {cur} of change does {name} get?",
            "Notebooks cost {p} {cur} each and pens cost {q} {cur} each. {name} buys {a} notebooks and {b} pens and hands over {N} {cur}. How much change is there, in {cur}?",
            "{name} has {N} {cur}. After buying {a} notebooks for {p} {cur} each and {b} pens for {q} {cur} each, how many {cur} are left?",
        ),
        "zh": (
            "{name}买了{a}本笔记本，每本{p}元，又买了{b}支钢笔，每支{q}元，付了{N}元。应找回多少元？",
            "笔记本每本{p}元，钢笔每支{q}元。{name}买了{a}本笔记本和{b}支钢笔，给了{N}元。找回多少元？",
            "{name}有{N}元，买了{a}本每本{p}元的笔记本和{b}支每支{q}元的钢笔后，还剩多少元？",
        ),
    }),
    Scenario("average_score", "multistep", 4, _average, (
        S("+", "a", "b", en="first two scores", zh="前两次的分数"),
        S("+", "#0", "c", en="total score", zh="总分"),
        S("÷", "#1", "3", en="average", zh="平均分"),
    ), {
        "en": (
            "{name} scored {a}, {b} and {c} on three tests. What is the average score?",
            "In three games a team scored {a}, {b} and {c} points. What is the average number of points per game?",
            "{name}'s marks in three subjects are {a}, {b} and {c}. What is the average mark?",
        ),
        "zh": (
            "{name}三次考试分别得了{a}分、{b}分和{c}分，平均分是多少？",
            "一支球队在三场比赛中分别得了{a}分、{b}分和{c}分，平均每场得多少分？",
            "{name}三门功课的成绩是{a}分、{b}分和{c}分，平均成绩是多少分？",
        ),
    }),
]  # fmt: skip

KINDS = ("arithmetic", "fraction", "percent", "unit", "multistep")
LEVELS = (1, 2, 3, 4)
