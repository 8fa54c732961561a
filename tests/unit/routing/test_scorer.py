"""The auto-mode scorer: signals, bounded scanning, and quality on a labelled prompt set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from server.routing.config import RouterConfig
from server.routing.scorer import SIGNALS, message_text, score_prompt

CFG = RouterConfig()
W = CFG.scorer.weights
LABELLED = yaml.safe_load(Path(__file__).with_name("labelled_prompts.yaml").read_text())


@pytest.mark.parametrize("text,signal", [
    ("integrate \\frac{1}{x} dx", "math_notation"),
    ("what is 3^4 * 2", "math_notation"),
    ("solve the equation for me", "math_words"),
    ("a train travels at 80 km/h", "word_problem"),
    ("prove it rigorously", "proof"),
    ("let's think step by step", "step_by_step"),
    ("```python\nprint(1)\n```", "code_block"),
    ("implement a function in rust", "code_words"),
    ("Traceback (most recent call last):\n  File \"a.py\", line 3", "stack_trace"),
    ("compare the trade-offs", "multi_step"),
    ("here is a riddle", "logic_puzzle"),
    ("hello!", "chit_chat"),
    ("translate to French", "rewrite_translate"),
    ("what is the capital of Peru", "lookup"),
    ("证明这个定理", "proof"),
    ("请翻译", "rewrite_translate"),
])
def test_each_signal_fires(text, signal):
    assert signal in score_prompt(text, 1, W).signals


@pytest.mark.parametrize("text,signal", [
    ("please proofread my letter", "proof"),          # "proof" only as a whole word
    ("a primer on gardening", "math_words"),          # "prime" only as a whole word
    ("I trust you", "code_words"),                    # "rust" only as a whole word
    ("my_function_name is long", "code_words"),       # underscores join words
    ("the cosine of nothing", "math_notation"),       # cos( needs the parenthesis
    ("then we rest", "multi_step"),                   # a lone "then" is no sequence
    ("no Traceback here", "stack_trace"),
])
def test_signal_does_not_fire(text, signal):
    assert signal not in score_prompt(text, 1, W).signals


@pytest.mark.parametrize("text,signal", [
    ("TRACEBACK (most recent call last):", "stack_trace"),  # case-insensitive
    ("ValueError: bad value", "stack_trace"),
    ("  File \"x.py\", line 12, in f", "stack_trace"),
    ("compute sin(x) + cos (y)", "math_notation"),
    ("x mod 7", "math_notation"),
    ("It costs $12 each", "word_problem"),
    ("Do these:\n1. wash\n2. dry\n3. fold", "multi_step"),   # a numbered list at the start
    ("intro\n- a\n- b\n- c\n", "multi_step"),
    ("First boil water, then add the pasta", "multi_step"),
    ("Zuerst die Daten laden, dann filtern", "multi_step"),
    ("首先读取数据，然后排序", "multi_step"),
    ("Beweise den Satz Schritt für Schritt", "step_by_step"),
    ("Löse die Gleichung", "math_words"),
    ("Найди вероятность события", "math_words"),
    ("Напиши код на Python", "code_words"),
    ("¿Cuántos días tiene un año bisiesto?", "word_problem"),
    ("write it in c++ please", "code_words"),
    ("Eigenvalues of A", "math_words"),
])
def test_signal_fires_in_context(text, signal):
    assert signal in score_prompt(text, 1, W).signals


def test_every_signal_has_a_default_weight():
    assert set(W) == set(SIGNALS)


def test_length_signals():
    assert "long_prompt" in score_prompt("x" * 3000, 1, W).signals
    assert "long_conversation" in score_prompt("ok", 6, W).signals
    assert score_prompt("ok", 1, W).signals == ()


def test_zero_weight_disables_a_signal():
    weights = dict(W, proof=0.0)
    assert "proof" not in score_prompt("prove it", 1, weights).signals


def test_scan_is_bounded_but_sees_head_and_tail():
    middle = "lorem ipsum " * 10000
    assert "proof" in score_prompt("prove this: " + middle, 1, W, max_scan_chars=1024).signals
    assert "proof" in score_prompt(middle + " now prove it", 1, W, max_scan_chars=1024).signals
    assert "proof" not in score_prompt(middle[:60000] + " prove " + middle[:60000], 1, W, max_scan_chars=1024).signals


def test_message_text_handles_parts():
    assert message_text([{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]) == "a\nb"
    assert message_text(None) == ""


def test_explain_names_signals():
    r = score_prompt("Prove it step by step", 1, W)
    assert r.explain().startswith(f"score={r.score:.2f}")
    assert "proof" in r.explain() and "step_by_step" in r.explain()


def _route(text):
    return "thinking" if score_prompt(text, 1, W).score >= CFG.scorer.threshold else "fast"


def test_labelled_prompt_quality():
    thinking = LABELLED["thinking"]
    fast = LABELLED["fast"]
    missed = [p for p in thinking if _route(p) != "thinking"]
    wasted = [p for p in fast if _route(p) != "fast"]
    accuracy = 1 - (len(missed) + len(wasted)) / (len(thinking) + len(fast))
    miss_share = len(missed) / len(thinking)
    print(f"\nauto-mode scorer: {len(thinking) + len(fast)} prompts, accuracy {accuracy:.1%}, "
          f"thinking sent to fast {miss_share:.1%}, fast sent to thinking {len(wasted) / len(fast):.1%}")
    assert miss_share < 0.10, missed
    assert len(wasted) / len(fast) < 0.15, wasted  # not everything goes to thinking
    assert accuracy >= 0.9


def test_labelled_set_is_multilingual():
    import re

    texts = LABELLED["thinking"] + LABELLED["fast"]
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", t)) for t in texts) >= 8  # Chinese
    assert sum(bool(re.search(r"[\u0400-\u04ff]", t)) for t in texts) >= 4  # Russian
    assert sum(bool(re.search(r"[\u3040-\u30ff]", t)) for t in texts) >= 3  # Japanese
    assert sum(bool(re.search(r"[ñéèüßç¿]", t)) for t in texts) >= 6  # Spanish, French, German
