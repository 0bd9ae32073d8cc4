"""Offline multi-speaker training corpus: CMU ARCTIC sentences read by eSpeak NG and Piper voices.

    from valle.corpus import CorpusConfig, build_corpus
    build_corpus("data/corpus", CorpusConfig())   # 48 speakers, ~75 min, manifest.jsonl

Modules: ``sentences`` (prompt list and fixed train/held-out split), ``speakers`` (the speaker
catalogue), ``espeak`` / ``piper`` (engines), ``build`` (plan, synthesis, manifest), ``cli``.
"""

from valle.corpus.build import CorpusConfig, build_corpus

__all__ = ["CorpusConfig", "build_corpus"]
