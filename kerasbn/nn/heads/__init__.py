"""The heads a network ends in, each a module registering itself (`registry.register_head`):
softmax (the study's Dense classifier and cross entropy), and the margin heads on L2-normalised
features and centres, CosFace and ArcFace (margins, on cosine's classifier)."""
