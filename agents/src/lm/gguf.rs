//! GGUF import (llama.cpp's single-file format, v2 and v3): the header is read here, every length
//! checked against the file before anything is allocated; the tensors are dequantised by candle's
//! ggml kernels (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants); the result is
//! written as a Hugging Face checkpoint directory ([`crate::lm::hf`]) with a `tokenizer.json` built
//! from the file's vocabulary and merges.
//!
//! llama.cpp's converter permutes the rows of Llama's query and key projections for its
//! interleaved RoPE; the import undoes it so that the weights match transformers' rotate-half
//! layout (Qwen2 files are not permuted).

use crate::lm::checkpoint::{self, CheckpointConfig, ModelKind};
use crate::lm::model::{Activation, Family, GptConfig};
use crate::lm::tokenizer::Tokenizer;
use crate::{AgentError, Result};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    UInt(u64),
    /// Any signed integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::UInt(u) => Some(u),
            MetaValue::Int(i) if i >= 0 => Some(i as u64),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::Float(f) => Some(f),
            MetaValue::UInt(u) => Some(u as f64),
            MetaValue::Int(i) => Some(i as f64),
            _ => None,
        }
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`, …).
    pub name: String,
    /// Dimensions, outermost first (the header stores them innermost first).
    pub shape: Vec<usize>,
    /// The ggml type id.
    pub type_id: u32,
    /// Offset of its data from the start of the data section.
    pub offset: u64,
}

/// A GGUF file's header.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Key/value metadata.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
}

fn gerr(path: &Path, msg: impl Into<String>) -> AgentError {
    AgentError::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The ggml type of `id` as candle knows it, with its name; `None` for the types it does not
/// dequantise.
fn ggml_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// ggml's name of a type id, for messages.
pub fn type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("type {id}"), |n| n.to_string())
}

/// Reads the header with every length bounded by what is left of the file.
struct Reader<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn bytes(&mut self, n: u64, what: &str) -> std::result::Result<Vec<u8>, String> {
        if n > self.len.saturating_sub(self.pos) {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.pos, self.len
            ));
        }
        let mut v = vec![0u8; n as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| format!("reading {what}: {e}"))?;
        self.pos += n;
        Ok(v)
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.bytes(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.bytes(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|_| format!("{what}: not UTF-8"))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> std::result::Result<MetaValue, String> {
        let mut fixed = |n: u64| self.bytes(n, key);
        Ok(match ty {
            0 => MetaValue::UInt(fixed(1)?[0] as u64),
            1 => MetaValue::Int(fixed(1)?[0] as i8 as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(fixed(2)?.try_into().expect("2")) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(fixed(2)?.try_into().expect("2")) as i64),
            4 => MetaValue::UInt(u32::from_le_bytes(fixed(4)?.try_into().expect("4")) as u64),
            5 => MetaValue::Int(i32::from_le_bytes(fixed(4)?.try_into().expect("4")) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(fixed(4)?.try_into().expect("4")) as f64),
            7 => MetaValue::Bool(fixed(1)?[0] != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 if depth < 2 => {
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the file is corrupt.
                if count > self.len.saturating_sub(self.pos) {
                    return Err(format!("truncated: array `{key}` claims {count} elements"));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(u64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            11 => MetaValue::Int(i64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            12 => MetaValue::Float(f64::from_le_bytes(fixed(8)?.try_into().expect("8"))),
            other => return Err(format!("metadata `{key}`: unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Read the header of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| AgentError::io(path, e))?;
        let len = f.metadata().map_err(|e| AgentError::io(path, e))?.len();
        let mut r = Reader {
            r: std::io::BufReader::new(f),
            pos: 0,
            len,
        };
        Self::read_header(&mut r, path).map_err(|m| gerr(path, m))
    }

    fn read_header<R: Read>(r: &mut Reader<R>, path: &Path) -> std::result::Result<Self, String> {
        if r.bytes(4, "magic")? != b"GGUF" {
            return Err("not a GGUF file (no `GGUF` magic)".into());
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(format!("GGUF version {version} is not supported (2 or 3)"));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_meta = r.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        if n_tensors > r.len {
            return Err(format!("truncated: {n_tensors} tensors claimed"));
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > 4 {
                return Err(format!("tensor `{name}`: {n_dims} dimensions"));
            }
            let mut shape = Vec::new();
            for _ in 0..n_dims {
                shape.push(r.u64(&name)? as usize);
            }
            shape.reverse();
            let type_id = r.u32(&name)?;
            let offset = r.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                shape,
                type_id,
                offset,
            });
        }
        let align = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_u64)
            .filter(|a| *a > 0 && a.is_power_of_two())
            .unwrap_or(32);
        let data_start = r.pos.div_ceil(align) * align;
        Ok(Self {
            path: path.to_path_buf(),
            metadata,
            tensors,
            data_start,
            file_len: r.len,
        })
    }

    fn meta(&self, key: &str) -> Result<&MetaValue> {
        self.metadata
            .get(key)
            .ok_or_else(|| gerr(&self.path, format!("metadata `{key}` is missing")))
    }
    fn meta_usize(&self, key: &str) -> Result<usize> {
        self.meta(key)?
            .as_u64()
            .filter(|&v| v > 0 && v <= 1 << 24)
            .map(|v| v as usize)
            .ok_or_else(|| {
                gerr(
                    &self.path,
                    format!("metadata `{key}`: expected a positive integer"),
                )
            })
    }
    fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta(key)?
            .as_str()
            .ok_or_else(|| gerr(&self.path, format!("metadata `{key}`: expected a string")))
    }
    fn meta_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.meta(key)? {
            MetaValue::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        gerr(&self.path, format!("metadata `{key}`: expected strings"))
                    })
                })
                .collect(),
            _ => Err(gerr(
                &self.path,
                format!("metadata `{key}`: expected an array"),
            )),
        }
    }

    /// The tensor `t` dequantised to fp32, shape outermost first.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Tensor> {
        let dtype = ggml_type(t.type_id).ok_or_else(|| {
            gerr(
                &self.path,
                format!(
                    "tensor `{}` has type {}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q6_K)",
                    t.name,
                    type_name(t.type_id)
                ),
            )
        })?;
        let elems = t
            .shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n > 0 && n.is_multiple_of(dtype.block_size()))
            .ok_or_else(|| {
                gerr(
                    &self.path,
                    format!("tensor `{}`: bad shape {:?}", t.name, t.shape),
                )
            })?;
        let size = (elems / dtype.block_size()) as u64 * dtype.type_size() as u64;
        let start = self.data_start.checked_add(t.offset);
        if start
            .and_then(|s| s.checked_add(size))
            .is_none_or(|end| end > self.file_len)
        {
            return Err(gerr(
                &self.path,
                format!(
                    "truncated: tensor `{}`'s data runs past the end of the file",
                    t.name
                ),
            ));
        }
        let mut f = std::fs::File::open(&self.path).map_err(|e| AgentError::io(&self.path, e))?;
        let mut raw = vec![0u8; size as usize];
        f.seek(SeekFrom::Start(start.unwrap_or_default()))
            .and_then(|_| f.read_exact(&mut raw))
            .map_err(|e| AgentError::io(&self.path, e))?;
        let cerr = |e: candle_core::Error| gerr(&self.path, format!("tensor `{}`: {e}", t.name));
        let q = qtensor_from_ggml(dtype, &raw, t.shape.clone(), &candle_core::Device::Cpu)
            .map_err(cerr)?;
        let values: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1())
            .map_err(cerr)?;
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::from_slice(&values).view(shape.as_slice()))
    }
}

/// Undo llama.cpp's row permutation of a query or key projection `[heads · D, in]`.
fn unpermute(w: &Tensor, heads: i64) -> Tensor {
    let size = w.size();
    let (out, rest) = (size[0], &size[1..]);
    let mut shape = vec![heads, 2, out / heads / 2];
    shape.extend_from_slice(rest);
    // The converter's `reshape(h, 2, D/2, …).swapaxes(1, 2)` read backwards.
    let mut from = vec![heads, out / heads / 2, 2];
    from.extend_from_slice(rest);
    w.reshape(from.as_slice())
        .transpose(1, 2)
        .reshape(size.as_slice())
}

/// transformers' name of a GGUF tensor of the Llama family.
fn hf_tensor_name(gguf: &str) -> Option<String> {
    let simple = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// What an import wrote.
#[derive(Debug)]
pub struct ImportReport {
    /// The model's shape.
    pub config: GptConfig,
    /// Tensors per ggml type name.
    pub types: BTreeMap<String, usize>,
    /// Tokens in the vocabulary.
    pub vocab: usize,
}

/// The model's shape from the GGUF metadata.
fn config_of(g: &GgufFile) -> Result<GptConfig> {
    let arch = g.meta_str("general.architecture")?;
    let family = match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        other => {
            return Err(gerr(
                &g.path,
                format!("architecture `{other}` is not supported for GGUF import (llama, qwen2)"),
            ))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let embd = g
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| gerr(&g.path, "tensor `token_embd.weight` is missing"))?;
    let heads = g.meta_usize(&key("attention.head_count"))?;
    let kv = match g.metadata.get(&key("attention.head_count_kv")) {
        Some(_) => g.meta_usize(&key("attention.head_count_kv"))?,
        None => heads,
    };
    let f64_or = |k: &str, d: f64| -> Result<f64> {
        match g.metadata.get(&key(k)) {
            None => Ok(d),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| gerr(&g.path, format!("metadata `{}`: expected a number", key(k)))),
        }
    };
    let cfg = GptConfig {
        family,
        n_kv_head: (kv != heads).then_some(kv),
        intermediate_size: Some(g.meta_usize(&key("feed_forward_length"))?),
        activation: Activation::Silu,
        rope_theta: f64_or("rope.freq_base", 10_000.0)?,
        norm_eps: f64_or("attention.layer_norm_rms_epsilon", 1e-6)?,
        tie_word_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
        ..GptConfig::gpt2(
            embd.shape.first().copied().unwrap_or(0),
            g.meta_usize(&key("block_count"))?,
            heads,
            g.meta_usize(&key("embedding_length"))?,
            g.meta_usize(&key("context_length"))?,
        )
    };
    cfg.validate().map_err(|e| gerr(&g.path, e.to_string()))?;
    Ok(cfg)
}

/// The tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model = gpt2`) from its
/// tokens and merges, the pre-tokenizer its `tokenizer.ggml.pre` names, control and user-defined
/// tokens as special tokens, and the chat template and special-token ids of its metadata.
fn tokenizer_of(g: &GgufFile) -> Result<Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::sequence::Sequence;
    use tokenizers::{AddedToken, PreTokenizerWrapper};

    let model = g.meta_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(gerr(
            &g.path,
            format!("tokenizer `{model}` is not supported for GGUF import (gpt2, byte-level BPE)"),
        ));
    }
    let tokens = g.meta_strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = g
        .meta_strings("tokenizer.ggml.merges")?
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| gerr(&g.path, format!("merge `{m}`: expected two tokens")))
        })
        .collect::<Result<_>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| gerr(&g.path, format!("tokenizer: {e}")))?;
    let byte_level = ByteLevel::new(false, true, true);
    let pre = match g
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
    {
        None | Some("gpt-2") | Some("default") => PreTokenizerWrapper::ByteLevel(byte_level),
        Some("smollm") => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])),
        Some(other) => {
            return Err(gerr(
                &g.path,
                format!("pre-tokenizer `{other}` is not supported (smollm, gpt-2)"),
            ))
        }
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre));
    inner.with_decoder(Some(byte_level));
    // Control (3) and user-defined (4) tokens are matched whole, before the BPE.
    let types: Vec<u64> = match g.metadata.get("tokenizer.ggml.token_type") {
        Some(MetaValue::Array(items)) => items.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(s, _)| AddedToken::from(s.to_string(), true))
        .collect();
    inner.add_special_tokens(&specials);
    let name_of = |key: &str| -> Option<String> {
        let id = g.metadata.get(key)?.as_u64()? as usize;
        tokens.get(id).map(|t| t.to_string())
    };
    let eos = name_of("tokenizer.ggml.eos_token_id");
    // Instruct models often pad with EOS; PAD must be distinct for training, so a PAD equal to EOS
    // is left for the tokenizer to replace (with `<|endoftext|>` where there is one).
    let pad = name_of("tokenizer.ggml.padding_token_id").filter(|p| Some(p) != eos.as_ref());
    let add_bos = g
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .map(|v| matches!(v, MetaValue::Bool(true)))
        .unwrap_or(false);
    let cfg = serde_json::json!({
        "bos_token": name_of("tokenizer.ggml.bos_token_id"),
        "eos_token": eos,
        "pad_token": pad,
        "add_bos_token": add_bos,
        "chat_template": g.metadata.get("tokenizer.chat_template").and_then(MetaValue::as_str),
    });
    Tokenizer::from_parts(inner, &cfg).map_err(|e| gerr(&g.path, e.to_string()))
}

/// Import the GGUF file `path` into the checkpoint directory `out` (Hugging Face layout, fp32).
pub fn import(path: &Path, out: &Path) -> Result<ImportReport> {
    let g = GgufFile::open(path)?;
    let cfg = config_of(&g)?;
    let tokenizer = tokenizer_of(&g)?;
    use aligngym_envs::TextCodec;
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(gerr(
            path,
            format!(
                "the vocabulary has {} tokens but token_embd.weight has {} rows",
                tokenizer.vocab_size(),
                cfg.vocab_size
            ),
        ));
    }
    let mut types = BTreeMap::new();
    let mut tensors = HashMap::new();
    for t in &g.tensors {
        let name = hf_tensor_name(&t.name).ok_or_else(|| {
            gerr(
                path,
                format!("tensor `{}` is not part of a {} model", t.name, cfg.family),
            )
        })?;
        let mut w = g.dequantize(t)?;
        if cfg.family == Family::Llama {
            if name.ends_with("q_proj.weight") {
                w = unpermute(&w, cfg.n_head as i64);
            } else if name.ends_with("k_proj.weight") {
                w = unpermute(&w, cfg.kv_heads() as i64);
            }
        }
        *types.entry(type_name(t.type_id)).or_insert(0) += 1;
        tensors.insert(name, w);
    }
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = crate::lm::model::Gpt::new(&vs.root(), &cfg)?;
    crate::lm::hf::load_into(&vs, cfg.family, tensors, path)?;
    let ck = CheckpointConfig {
        kind: ModelKind::Policy,
        model: cfg.clone(),
        reward_offset: 0.0,
        aligngym_version: String::new(),
    };
    checkpoint::save(out, &vs, &tokenizer, &ck)?;
    Ok(ImportReport {
        config: cfg,
        types,
        vocab: tokenizer.vocab_size(),
    })
}
