"""The built-in mixed suite: short real prompts of the kinds a Qwen deployment serves.

Each entry: category, the user turns (more than one makes a multi-turn conversation) and
an output budget. Categories: chat, maths, code, multilingual (Chinese among them).
"""

from __future__ import annotations

from typing import Dict, List

SUITE: List[Dict[str, object]] = [
    # chat
    {"category": "chat", "turns": ["Hi! Can you suggest three names for a grey kitten?"], "max_tokens": 96},
    {"category": "chat", "turns": ["Write a two-sentence thank-you note to a colleague who covered my shift."], "max_tokens": 96},
    {"category": "chat", "turns": ["What is a good way to start learning to paint with watercolours?"], "max_tokens": 160},
    {"category": "chat", "turns": ["Summarise the plot of Romeo and Juliet in one paragraph."], "max_tokens": 160},
    {"category": "chat", "turns": ["Plan a relaxed one-day walking tour of Lisbon.", "Now make it suitable for a rainy day."], "max_tokens": 192},
    {"category": "chat", "turns": ["Explain what a mortgage is to a teenager."], "max_tokens": 128},
    # maths
    {"category": "maths", "turns": ["What is 17 * 23? Show your working."], "max_tokens": 192},
    {"category": "maths", "turns": ["Solve for x: 3x + 7 = 2x - 5."], "max_tokens": 192},
    {"category": "maths", "turns": ["A train travels 240 km in 3 hours, then 160 km in 2 hours. What is its average speed?"], "max_tokens": 224},
    {"category": "maths", "turns": ["Prove that the square root of 2 is irrational."], "max_tokens": 320},
    {"category": "maths", "turns": ["How many ways can 5 people sit around a round table?", "And if two of them refuse to sit next to each other?"], "max_tokens": 256},
    {"category": "maths", "turns": ["Find the derivative of f(x) = x^3 * ln(x)."], "max_tokens": 192},
    # code
    {"category": "code", "turns": ["Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation."], "max_tokens": 224},
    {"category": "code", "turns": ["Explain the difference between a list and a tuple in Python, with a short example."], "max_tokens": 192},
    {"category": "code", "turns": ["Write a SQL query returning the 5 customers with the highest total order value."], "max_tokens": 160},
    {"category": "code", "turns": ["Here is a bug: `for i in range(len(xs)): xs.remove(xs[i])` raises IndexError. Why, and how do I fix it?"], "max_tokens": 224},
    {"category": "code", "turns": ["Implement binary search in Rust.", "Now make it generic over any Ord type."], "max_tokens": 256},
    {"category": "code", "turns": ["Write a bash one-liner that counts lines in all .py files under the current directory."], "max_tokens": 96},
    # multilingual
    {"category": "multilingual", "turns": ["请用三句话介绍一下长城的历史。"], "max_tokens": 192},
    {"category": "multilingual", "turns": ["解释一下什么是机器学习，并举一个日常生活中的例子。"], "max_tokens": 224},
    {"category": "multilingual", "turns": ["把这句话翻译成英文：今天天气很好，我们去公园散步吧。"], "max_tokens": 64},
    {"category": "multilingual", "turns": ["一个笼子里有鸡和兔共35只，脚共94只，鸡和兔各有多少只？"], "max_tokens": 256},
    {"category": "multilingual", "turns": ["Explique en deux phrases pourquoi le ciel est bleu."], "max_tokens": 128},
    {"category": "multilingual", "turns": ["Schreibe ein kurzes Gedicht über den Herbst."], "max_tokens": 128},
    {"category": "multilingual", "turns": ["¿Cuáles son los beneficios de aprender un segundo idioma?"], "max_tokens": 160},
    {"category": "multilingual", "turns": ["日本の四季について簡単に説明してください。"], "max_tokens": 160},
]

CATEGORIES = sorted({str(e["category"]) for e in SUITE})
