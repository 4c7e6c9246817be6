//! `pytorch_model.bin` reader (PyTorch zip archive + pickle), in Rust, no Python.
//! PLACEHOLDER: to be implemented.
