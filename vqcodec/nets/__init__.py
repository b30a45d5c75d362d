"""Neural networks: autoencoders and quantizers. They know tensors, never files or bytes."""
