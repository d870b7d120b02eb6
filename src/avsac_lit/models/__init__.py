"""The networks: encoders, shared parts, AVSegFormer and AVSAC (plain nn.Modules)."""
