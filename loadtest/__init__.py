"""qwen-loadtest: a load tester for OpenAI-compatible servers that tells thinking from answering.

Python API: ``loadtest.runner.run(RunConfig(...)) -> Result`` (``result.summary``,
``result.records``, ``result.stages``); CLI: ``qwen-loadtest`` / ``python -m loadtest``.
"""

__version__ = "0.1.0"
