"""mllm-da: domain-adaptive post-training of multimodal LLMs."""

from mllm_da.utils.conf import register_conf_catalog

# before any config is composed: `benchmark: all` and the domain-benchmarks resolver (mllm_da/utils/conf.py)
register_conf_catalog()
