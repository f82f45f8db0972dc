"""The networks kerasbn builds by name, each a module registering its builder
(`registry.register_network`): the study's (study), Caffe's CIFAR-10 examples (cifar10),
insightface's IResNets (iresnet) and MobileFaceNet (mobilefacenet); and an imported Caffe
network as a backbone (imported, given by path, not by name)."""
