"""Reading a model's answer: its final value, its form, and what it says about its own quality.

Pure text -> numbers, no model download, used by the post-hoc estimator
(:mod:`scheduler.predictor.posthoc`). For each answer :func:`read_answer` gives

* the **final answer** in a canonical form, as a stable 63-bit key (``0`` = none could be read),
  so agreement between models is one integer comparison: a choice letter for multiple-choice
  prompts (options ``A)``/``(A)``/``A.`` in the prompt), else the marked number (``#### 18``,
  ``the answer is 18``, ``\\boxed{18}``) or the last number, else a short answer's normalised text;
  code has no key (two correct programs rarely match): its similarity is in the signature below;
* **form features** (:data:`ANSWER_FEATURES`): length, a refusal, hedging words, which form the
  final answer took, code (a fenced or bare block; Python or another language; whether the Python
  parses), an arithmetic check of the worked steps (``a op b = c`` and GSM8K-style ``<<a*b=c>>``
  annotations re-evaluated), whether the final number is one of the prompt's own numbers, whether
  the answer ends cleanly (not cut off);
* a **MinHash signature** of the answer's word (or code) tokens, so the similarity of two answers
  is the share of equal signature entries, vectorised over many pairs.

Every rule is generic (no dataset name appears); which ones matter is learnt from graded outcomes.
"""
from __future__ import annotations

import ast
import hashlib
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

SIGNATURE_SIZE = 16
_MERSENNE = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20240611)
_HASH_A = _rng.integers(1, (1 << 61) - 2, SIGNATURE_SIZE, dtype=np.uint64)
_HASH_B = _rng.integers(0, (1 << 61) - 2, SIGNATURE_SIZE, dtype=np.uint64)

ANSWER_FEATURES: tuple[str, ...] = (
    "log_chars", "log_lines", "empty", "refusal", "hedges",
    "choice_clean", "choice", "number_marked", "number_last", "text_short",
    "code", "code_python", "code_other_language", "code_parses", "code_defs", "code_return",
    "arith_checked", "arith_wrong", "arith_wrong_share",
    "final_integer", "final_in_prompt", "final_negative", "ends_clean", "numbers",
    "choice_index", "prompt_choice", "prompt_python",
)

_OPTION = re.compile(r"(?:^|\n)\s*\(?([A-J])[\).:][ \t]*([^\n]*)")
_CHOICE_START = re.compile(r"^\s*\(?([A-J])(?:\)|\.|:|\]|\s|$)")
_CHOICE_SAID = re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*:?\s*\(?([A-J])\b", re.IGNORECASE)
_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
_MARKED = re.compile(
    r"####\s*(" + _NUM + r")|answer\s*(?:is|:)\s*:?\s*\$?(" + _NUM + r")|\\boxed\{\s*\$?(" + _NUM + r")",
    re.IGNORECASE,
)
_NUMBER = re.compile(_NUM)
_ANNOTATION = re.compile(r"<<([^<>=]{1,200})=([^<>]{1,40})>>")
_EQUATION = re.compile(
    r"(?<![\w.])((?:\(?\$?\d[\d,]*(?:\.\d+)?\)?\s*[-+*/x\u00d7\u00f7]\s*)+\(?\$?\d[\d,]*(?:\.\d+)?\)?)"
    r"\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)"
)
_REFUSAL = re.compile(
    r"^\s*(?:i do not|i don't|i'm sorry|i am sorry|sorry|unfortunately|as an ai|i cannot|i can't|"
    r"i'm not able|i am not able|there is no|none of)", re.IGNORECASE)
_HEDGE = re.compile(
    r"\b(?:however|actually|mistake|assum\w*|approximately|not sure|unclear|corrected|error|apolog\w*|"
    r"cannot be determined|it seems|wait|ambiguous|incorrect)\b", re.IGNORECASE)
_FENCE = re.compile(r"```([\w+#-]*)[^\n]*\n(.*?)(?:```|$)", re.DOTALL)
_BARE_CODE = re.compile(r"^(?:def |class |import |from \w+ import )", re.MULTILINE)
_OTHER_LANGUAGE = {"javascript", "js", "java", "cpp", "c++", "c", "csharp", "c#", "go", "rust", "ruby",
                   "php", "typescript", "ts", "swift", "kotlin", "scala", "r", "perl", "bash", "sh", "sql"}
_TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|[^\sA-Za-z_\d]")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class AnswerReading:
    """What :func:`read_answer` found in one answer."""

    key: int                 # canonical final answer as a stable 63-bit hash; 0 = none
    features: np.ndarray     # (len(ANSWER_FEATURES),) float32
    signature: np.ndarray    # (SIGNATURE_SIZE,) uint64 MinHash of the answer's tokens


@dataclass(frozen=True)
class PromptReading:
    """What the answer reader needs from the prompt, read once per job."""

    options: str            # the option letters a multiple-choice prompt offers ("" = none)
    option_texts: tuple[tuple[str, str], ...]   # (letter, normalised option text) of the last options
    numbers: frozenset[str] # the prompt's numbers, canonical
    python: bool            # the prompt mentions Python


def read_prompt(prompt: str) -> PromptReading:
    tail = prompt[-3000:]
    found = _OPTION.findall(tail)
    letters = {letter for letter, _ in found}
    options = "".join(sorted(letters)) if len(letters) >= 2 else ""
    texts: dict[str, str] = {}
    for letter, text in found:   # few-shot prompts repeat options: the last question's win
        norm = _normalise(text)
        if options and norm:
            texts[letter] = norm
    numbers = frozenset(c for c in (_canonical_number(x) for x in _NUMBER.findall(prompt[-4000:])) if c)
    return PromptReading(options, tuple(sorted(texts.items())), numbers, "python" in prompt.lower())


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def stable_key(kind: str, value: str) -> int:
    """A stable (process- and platform-independent) 63-bit key for a canonical final answer; never 0."""
    digest = hashlib.blake2b(f"{kind}:{value}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) or 1


def _canonical_number(text: str) -> str | None:
    cleaned = text.replace("$", "").replace(",", "").rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.6g}"


def _safe_eval(expr: str) -> float | None:
    """+ - * / on numbers only (no names, no powers), or None."""
    cleaned = expr.replace("$", "").replace(",", "").replace("\u00d7", "*").replace("\u00f7", "/")
    cleaned = re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", cleaned)
    if len(cleaned) > 200 or not re.fullmatch(r"[\d.\s()+\-*/]+", cleaned) or "**" in cleaned:
        return None
    try:
        tree = ast.parse(cleaned.strip(), mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
        raise ValueError("unsupported")

    try:
        value = ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None
    return value if math.isfinite(value) else None


def _same_number(computed: float, stated: str) -> bool:
    try:
        value = float(stated.replace("$", "").replace(",", ""))
    except ValueError:
        return True   # nothing to check against
    decimals = len(stated.split(".")[1]) if "." in stated else 0
    tolerance = max(0.5 * 10.0 ** -decimals, 1e-3 * abs(value), 1e-9)
    return abs(computed - value) <= tolerance + 1e-9


def arithmetic_check(text: str) -> tuple[int, int]:
    """(steps checked, steps wrong) over ``a op b = c`` equations and ``<<expr=value>>`` notes."""
    checked = wrong = 0
    if "=" not in text:
        return 0, 0
    for expr, stated in _ANNOTATION.findall(text) if "<<" in text else ():
        value = _safe_eval(expr)
        if value is None:
            continue
        checked += 1
        wrong += not _same_number(value, stated.strip())
    for expr, stated in _EQUATION.findall(_ANNOTATION.sub(" ", text) if "<<" in text else text):
        value = _safe_eval(expr)
        if value is None:
            continue
        checked += 1
        wrong += not _same_number(value, stated)
    return checked, wrong


def _code(text: str) -> tuple[str, str] | None:
    """(language tag or guess, code) of the answer's first code block, or None."""
    blocks = _FENCE.findall(text) if "```" in text else []
    if blocks:
        tag, body = blocks[0]
        for t, b in blocks:   # prefer a block that defines something
            if re.search(r"\b(def|function|class|public|int|void)\b", b):
                tag, body = t, b
                break
        return tag.lower(), body
    match = _BARE_CODE.search(text)
    if match:
        return "python", text[match.start():]
    return None


def _python_parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        pass
    # an explanation may follow the code without a closing fence: try the indented prefix
    lines = code.split("\n")
    for cut in range(len(lines) - 1, 0, -1):
        if lines[cut].strip() and not lines[cut].startswith((" ", "\t")) and ":" not in lines[cut]:
            try:
                ast.parse("\n".join(lines[:cut]))
                return True
            except (SyntaxError, ValueError):
                continue
    return False


def signature(tokens: list[str]) -> np.ndarray:
    """MinHash of a token set: equal entries of two signatures estimate their Jaccard similarity."""
    if not tokens:
        return np.zeros(SIGNATURE_SIZE, dtype=np.uint64)
    h = np.fromiter((zlib.crc32(t.encode()) for t in set(tokens)), dtype=np.uint64)
    mixed = (_HASH_A[:, None] * h[None, :] + _HASH_B[:, None]) % _MERSENNE
    return np.asarray(mixed.min(axis=1), dtype=np.uint64)


def read_answer(answer: str, prompt: PromptReading) -> AnswerReading:
    """Final-answer key, form features and signature of one answer to a prompt read by :func:`read_prompt`."""
    text = answer.replace("\r\n", "\n")
    stripped = text.strip()
    f = dict.fromkeys(ANSWER_FEATURES, 0.0)
    f["log_chars"] = math.log1p(len(stripped))
    f["log_lines"] = math.log1p(stripped.count("\n"))
    f["empty"] = float(not stripped)
    f["refusal"] = float(bool(_REFUSAL.match(stripped)))
    f["hedges"] = math.log1p(len(_HEDGE.findall(text)))
    f["prompt_choice"] = float(bool(prompt.options))
    f["prompt_python"] = float(prompt.python)
    f["choice_index"] = -1.0
    numbers = _NUMBER.findall(text)
    f["numbers"] = math.log1p(len(numbers))
    key = 0
    final_number: str | None = None
    code = _code(text)
    if prompt.options:
        letter = None
        m = _CHOICE_START.match(stripped)
        if m and m.group(1) in prompt.options:
            letter = m.group(1)
            f["choice_clean"] = float(len(stripped) <= 3)
        else:
            said = [x for x in _CHOICE_SAID.findall(text) if x in prompt.options]
            if said:
                letter = said[-1]
            elif 0 < len(stripped) <= 200:   # the option's text instead of its letter
                norm = _normalise(stripped)
                same = [x for x, t in prompt.option_texts if norm == t or norm.startswith(t + " ")]
                letter = same[0] if len(same) == 1 else None
        if letter is not None:
            f["choice"] = 1.0
            f["choice_index"] = float(ord(letter) - ord("A"))
            key = stable_key("choice", letter)
    if key == 0 and code is None and not prompt.options and not f["refusal"]:
        marked = [next(g for g in groups if g) for groups in _MARKED.findall(text)]
        if marked:
            final_number = _canonical_number(marked[-1])
            f["number_marked"] = float(final_number is not None)
        elif numbers:
            final_number = _canonical_number(numbers[-1])
            f["number_last"] = float(final_number is not None)
        if final_number is not None:
            key = stable_key("number", final_number)
            value = float(final_number)
            f["final_integer"] = float(value == int(value))
            f["final_negative"] = float(value < 0)
            f["final_in_prompt"] = float(final_number in prompt.numbers)
        elif 0 < len(stripped) <= 60:
            f["text_short"] = 1.0
            key = stable_key("text", " ".join(_WORD.findall(stripped.lower())))
    checked, wrong = arithmetic_check(text)
    f["arith_checked"] = math.log1p(checked)
    f["arith_wrong"] = float(wrong)
    f["arith_wrong_share"] = wrong / checked if checked else 0.0
    if code is not None:
        tag, body = code
        f["code"] = 1.0
        python = tag in ("python", "py", "python3") or (tag == "" and bool(re.search(r"^\s*def \w+\(.*\):", body, re.M)))
        f["code_python"] = float(python)
        f["code_other_language"] = float(tag in _OTHER_LANGUAGE or (not python and ("{" in body and ";" in body)))
        f["code_parses"] = float(python and _python_parses(body))
        f["code_defs"] = math.log1p(len(re.findall(r"^\s*def \w+", body, re.M)))
        f["code_return"] = float("return" in body)
        tokens = _TOKEN.findall(body)
    else:
        tokens = _WORD.findall(text.lower())
    last = stripped[-1:] if stripped else ""
    f["ends_clean"] = float(last in ".!?)]}`\"'*" or last.isdigit() or (len(stripped) <= 3 and bool(stripped)))
    feats = np.fromiter((f[name] for name in ANSWER_FEATURES), dtype=np.float32, count=len(ANSWER_FEATURES))
    return AnswerReading(key, feats, signature(tokens))
