"""The Visual Word Tokenizer: the algorithm as small pure functions, and the compressed model built on them."""

from .features import image_patches, patch_features
from .inter import NEAR_TIE_EPS, dense_relabel, match_keys, near_ties, similarity, word_labels
from .intra import keep_indices, resolve_keep, select_tokens
from .merge import attention_bias, pool_tokens, token_merge
from .model import CompressedViT, compress
from .vocab import Vocabulary, learn_vocabulary

__all__ = [
    "NEAR_TIE_EPS", "CompressedViT", "Vocabulary", "attention_bias", "compress", "dense_relabel", "image_patches",
    "keep_indices", "learn_vocabulary", "match_keys", "near_ties", "patch_features", "pool_tokens",
    "resolve_keep", "select_tokens", "similarity", "token_merge", "word_labels",
]
