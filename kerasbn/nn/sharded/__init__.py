"""The classifier's centres sharded across replicas (`--shard_classes`), as arcface_torch's
PartialFC_V2 holds them: `centres` (each replica's rows, their momentum, and checkpoints that
hold the whole matrix whatever the replica count), `softmax` (the margin on the rows a replica
owns, and the cross entropy whose maximum and normaliser are reduced across replicas), and
`training` (the model whose step runs them, the backbone data-parallel)."""
