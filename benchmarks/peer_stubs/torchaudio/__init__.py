"""Stand-in for torchaudio in the LLaMA-Factory benchmark venv (benchmarks/peer_llamafactory.py).

LLaMA-Factory's ``data/mm_plugin.py`` imports torchaudio at module level, but torchaudio's PyPI wheels are CUDA
builds whose ``_torchaudio.so`` needs ``libc10_cuda.so`` and does not load with the CPU torch. Only audio inputs use
it, and the benchmark trains on images only, so any use of this stand-in fails loudly.
"""

__version__ = "0.0.0+peer-benchmark-stub"


def __getattr__(name: str):
    raise RuntimeError(
        f"torchaudio.{name}: torchaudio is a stand-in in the LLaMA-Factory benchmark venv (audio inputs disabled)"
    )
