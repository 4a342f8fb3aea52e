"""Reading PyTorch tensors out of a process's memory.

``layouts`` supplies the per-release C++ layouts and dtype/device tables (generated from the DWARF of a
probe compiled against each release's headers by tools/gen_torch_isf.py); ``tensors`` decodes a
torch.Tensor Python object into metadata and reads its bytes.
"""
