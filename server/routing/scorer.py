"""Auto-mode prompt scorer: a pure, explainable function of the conversation.

Each signal is a precompiled pattern (or a length rule) that fires at most once per
prompt; the score is the sum of the configured weights of the signals that fired. Only a
bounded slice of each message is scanned (head and tail), so the cost stays flat for
8k-token prompts. Patterns cover English, Chinese, Spanish, French, German, Japanese and
Russian phrasings of the same intents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Mapping, Sequence, Tuple

_I = re.IGNORECASE

# signal name -> pattern. Kept in one table so the config can validate weight names.
_PATTERNS: Dict[str, "re.Pattern[str]"] = {
    "math_notation": re.compile(
        r"\\(?:frac|sqrt|int|sum|prod|lim|binom|cdot|infty)|[∫∑∏√≤≥≠∞π∂]|"
        r"\b\d+\s*[\^*/]\s*\d+|\b[a-z]\s*\^\s*\d|\d\s*[a-z]\s*[+\-=]\s*\d|"
        r"\b(?:sin|cos|tan|log|ln)\s*\(|\bmod\s+\d|\d+\s*!\s|[=]\s*\d+\s*[a-z]\b",
        _I,
    ),
    "math_words": re.compile(
        r"\b(?:equation|integral|derivative|theorem|lemma|polynomial|matrix|eigen\w*|probabilit\w+|"
        r"prime|factori[sz]e|modulo|divisible|remainder|inequality|geometry|triangle|calculus|solve for|"
        r"how many (?:ways|integers|numbers|solutions)|expected value|combinatori\w+)\b|"
        r"方程|积分|导数|概率|几何|三角形|质数|素数|余数|整除|不等式|多项式|矩阵|求解|计算|"
        r"ecuación|integral|probabilidad|équation|intégrale|probabilité|Gleichung|Wahrscheinlichkeit|"
        r"方程式|確率|積分|уравнени\w*|вероятност\w*|интеграл",
        _I,
    ),
    "word_problem": re.compile(
        r"\b(?:if .{0,60}\b(?:how many|how much|how long|what is the)|a train|per hour|km/h|mph|"
        r"has \d+ (?:apples|marbles|coins|books)|costs? \$?\d+|percent(?:age)? of)\b|"
        r"多少|几个|几天|每小时|"
        r"cuántos|combien|wie viele|いくつ|何個|сколько",
        _I,
    ),
    "proof": re.compile(
        r"\b(?:prove|proof|show that|demonstrate that|derive|rigorous(?:ly)?)\b|"
        r"证明|推导|demuestra|demostrar|prouve[rz]?|démontre[rz]?|beweise|beweisen|証明|доказ\w+|докаж\w*",
        _I,
    ),
    "step_by_step": re.compile(
        r"\b(?:step[- ]by[- ]step|think (?:carefully|hard|through)|reason (?:through|about)|"
        r"explain your reasoning|show (?:your|all) (?:work|steps)|chain of thought)\b|"
        r"一步一步|逐步|分步|详细推理|paso a paso|étape par étape|Schritt für Schritt|"
        r"段階的に|ステップ|шаг за шагом|пошагово",
        _I,
    ),
    "code_block": re.compile(r"```|^\s{4,}\S.*[;{}()]\s*$|^\s*(?:def|class|fn|func|public|import|#include)\b", _I | re.M),
    "code_words": re.compile(
        r"\b(?:function|algorithm|implement|refactor|debug|compile[sr]?|runtime|complexity|"
        r"regex|sql query|recursion|data structure|big-?o|unit test|segfault|race condition|"
        r"python|javascript|typescript|rust|golang|c\+\+|java)\b|"
        r"代码|函数|算法|编程|调试|实现一个|código|algoritmo|programme|Algorithmus|コード|アルゴリズム|код\w*|алгоритм",
        _I,
    ),
    "stack_trace": re.compile(
        r"Traceback \(most recent call last\)|^\s+at [\w.$]+\(.*:\d+\)|Exception in thread|"
        r"\b\w+Error: |panicked at|segmentation fault|core dumped|^\s*File \".*\", line \d+",
        _I | re.M,
    ),
    "multi_step": re.compile(
        r"(?:^\s*(?:\d+[.)]|[-*])\s+.+\n){3,}|\b(?:first|then|next|finally|after that)\b.*\b(?:then|finally|and then)\b|"
        r"\b(?:plan|design|compare|analy[sz]e|trade-?offs?|optimi[sz]e|evaluate)\b|"
        r"首先.*然后|分析|比较|设计|优化|primero.*luego|d'abord.*ensuite|zuerst.*dann|まず.*次に|сначала.*затем",
        _I | re.S,
    ),
    "logic_puzzle": re.compile(
        r"\b(?:puzzle|riddle|logic(?:al)?|paradox|knights? and knaves|truth-?teller|liar|deduce|"
        r"which of the following|if and only if)\b|谜题|逻辑|推理题|acertijo|énigme|Rätsel|パズル|論理|головоломк\w*|логик\w*",
        _I,
    ),
    "chit_chat": re.compile(
        r"^\s*(?:hi|hello|hey|thanks|thank you|good (?:morning|night|evening)|how are you|what's up|"
        r"你好|谢谢|早上好|hola|gracias|bonjour|merci|salut|hallo|danke|guten tag|こんにちは|ありがとう|привет|спасибо)\b",
        _I,
    ),
    "rewrite_translate": re.compile(
        r"\b(?:translate|translation|rephrase|rewrite|paraphrase|summari[sz]e|proofread|fix (?:the )?grammar|"
        r"make (?:it|this) (?:shorter|longer|more formal|friendlier)|tl;?dr)\b|"
        r"翻译|改写|润色|总结|摘要|traduce|traducir|resume|traduis|traduire|résume|übersetze|zusammenfassen|"
        r"翻訳|要約|переведи|перевод|перескажи",
        _I,
    ),
    "lookup": re.compile(
        r"^\s*(?:what is the capital|who (?:is|was|wrote|invented)|when (?:is|was|did)|where is|define |"
        r"what does .{1,40} mean|谁是|什么是|哪里|什么时候|quién es|qué es|qui est|qu'est-ce que|wer ist|was ist|"
        r"とは|誰|кто такой|что такое)",
        _I,
    ),
}

# Length rules are not patterns but still named signals.
SIGNALS: Tuple[str, ...] = tuple(_PATTERNS) + ("long_prompt", "long_conversation")


@dataclass(frozen=True)
class ScoreResult:
    score: float
    signals: Tuple[str, ...]

    def explain(self) -> str:
        fired = ",".join(self.signals) if self.signals else "none"
        return f"score={self.score:.2f} signals={fired}"


def _bounded(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n" + text[-half:]


def score_prompt(
    last_user_text: str,
    user_turns: int,
    weights: Mapping[str, float],
    *,
    long_prompt_chars: int = 2000,
    long_conversation_turns: int = 6,
    max_scan_chars: int = 2048,
) -> ScoreResult:
    """Score the last user message (plus conversation length) for thinking mode."""
    text = _bounded(last_user_text, max_scan_chars)
    fired = []
    total = 0.0
    for name, pattern in _PATTERNS.items():
        weight = weights.get(name)
        if not weight:
            continue
        if pattern.search(text):
            fired.append(name)
            total += weight
    if weights.get("long_prompt") and len(last_user_text) >= long_prompt_chars:
        fired.append("long_prompt")
        total += weights["long_prompt"]
    if weights.get("long_conversation") and user_turns >= long_conversation_turns:
        fired.append("long_conversation")
        total += weights["long_conversation"]
    return ScoreResult(score=round(total, 4), signals=tuple(fired))


def message_text(content: object) -> str:
    """Text of an OpenAI message content: a string or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
        return "\n".join(parts)
    return ""
