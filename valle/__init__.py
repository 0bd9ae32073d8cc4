"""VALL-E: neural-codec language modelling for zero-shot TTS, plus its offline toolchain.

text -> phonemes -> AR transformer (codebook 1) -> NAR transformer (codebooks 2..8) -> codec -> audio
"""

__version__ = "0.1.0"
