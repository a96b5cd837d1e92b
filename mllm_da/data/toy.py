"""Where ``conf/domain/toy.yaml`` finds the toy domain's builder (``_target_: mllm_da.data.toy.build_toy_domain``).

The toy domain itself lives in :mod:`mllm_da.toy`; this module only keeps that dotted path working, and can go once
the config names ``mllm_da.toy.build_toy_domain``.
"""

from mllm_da.toy.build import build_toy_domain, main

__all__ = ["build_toy_domain", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
