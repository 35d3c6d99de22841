from cosmos_dist.attention.local import AttentionFn, attention_with_lse, get_local_attention, sdpa_attention

__all__ = ["AttentionFn", "attention_with_lse", "get_local_attention", "sdpa_attention"]
