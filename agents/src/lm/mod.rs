//! The language model and nothing else: the transformer in its families with its CPU decode
//! kernels, sampling with the KV cache, the tokenizer and chat templates, checkpoints (Hugging
//! Face, GGUF, safetensors), LoRA adapters and PEFT's files for them, the policy wrappers (actor,
//! reference, critic), devices and precision, the optimiser, and durable file writes. Nothing here knows about rewards, envs or algorithms.

pub mod chat_template;
pub mod checkpoint;
pub mod device;
pub mod fsio;
pub mod gguf;
pub mod hf;
pub mod lora;
pub mod model;
pub mod optim;
pub mod peft;
pub mod policy;
pub mod safetensors;
pub mod sampling;
pub mod tokenizer;
