"""The defaults of VWT's options, written once: the torch model, the graph pass and the methods' options read them.

Chosen on real weights and real photos (DINOv2-S/14, 28 held-out photo crops; README, "Defaults chosen on real
data"): local grouping keeps more quality per token than global, proportional attention helps at every merge
rate, and threshold 0.05 keeps the features' cosine to the uncompressed model near 0.97 with about half the
patches merged away."""

THRESHOLD = 0.05  # largest cosine distance at which a patch matches a visual word
GROUPING = "local"  # only 4-connected patches of one word merge (global: every patch of the word)
PROP_ATTN = True  # add log(size) of merged tokens to the attention logits
KEEP = 0.75  # intra: the fraction of patches kept
