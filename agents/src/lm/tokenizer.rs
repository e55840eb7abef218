//! A byte-level BPE tokenizer (the `tokenizers` crate) with PAD, BOS and EOS, saved as the standard
//! `tokenizer.json`, so a tokenizer made elsewhere loads too.

use crate::lm::chat_template::ChatTemplate;
use crate::lm::hf;
use crate::{AgentError, Result};
use aligngym_envs::{Message, TextCodec};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

/// Padding token (never EOS).
pub const PAD: &str = "<|pad|>";
/// Beginning of sequence.
pub const BOS: &str = "<|bos|>";
/// End of sequence.
pub const EOS: &str = "<|eos|>";
/// The Hugging Face file beside `tokenizer.json` with the special tokens and the chat template.
pub const CONFIG_FILE: &str = "tokenizer_config.json";
/// Where transformers 5 saves a chat template (beside `tokenizer.json`).
pub const TEMPLATE_FILE: &str = "chat_template.jinja";
/// End of a policy turn in a multi-turn conversation (the built-in chat format; never EOS or PAD).
pub const EOT: &str = aligngym_envs::chat::END_OF_TURN;

/// How a prompt reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PromptFormat {
    /// Through the checkpoint's own chat template where it has one (instruct models), else as
    /// plain text.
    #[default]
    Auto,
    /// As the user's message, rendered by the chat template with the assistant's turn opened
    /// (aligngym's built-in template renders a prompt as plain text).
    Chat,
    /// As plain text after BOS, as a base model continues it.
    Raw,
}

/// The tokenizer every model of a run shares.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad: u32,
    /// None where the tokenizer has no BOS (Qwen2's `"bos_token": null`).
    bos: Option<u32>,
    eos: u32,
    /// Every id that ends a generation: EOS first, then the other `eos_token_id`s of the
    /// checkpoint's `generation_config.json` (Llama 3 and Qwen2.5-Instruct list several).
    eos_ids: Vec<u32>,
    eot: Option<u32>,
    template: ChatTemplate,
    /// The BOS and EOS strings, as chat templates read them (BOS empty where there is none).
    bos_token: String,
    eos_token: String,
    /// Whether a prompt starts with BOS (aligngym's models; Llama's tokenizers).
    add_bos: bool,
    /// Whether a task's prompt reaches the model through its chat template, as the user's message
    /// (instruct models from elsewhere); aligngym's own models read the bare text after BOS.
    chat_prompts: bool,
}

/// A special token as `tokenizer_config.json` names it: a string or `{"content": …}`.
fn token_field(cfg: Option<&serde_json::Value>, field: &str) -> Option<String> {
    let v = cfg?.get(field)?;
    v.as_str()
        .or_else(|| v.get("content").and_then(|c| c.as_str()))
        .map(str::to_string)
}

/// The `eos_token_id` of a `generation_config.json` or `config.json`: one id, a list, or none.
fn eos_token_ids(v: &serde_json::Value) -> std::result::Result<Vec<u32>, String> {
    let id = |x: &serde_json::Value| {
        x.as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| format!("field `eos_token_id`: expected token ids, found {x}"))
    };
    match v.get("eos_token_id") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a.iter().map(id).collect(),
        Some(x) => Ok(vec![id(x)?]),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", path.display())))
}

fn tok_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Tokenizer(e.to_string())
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab={}, pad={}, bos={:?}, eos={:?})",
            self.vocab_size(),
            self.pad,
            self.bos,
            self.eos_ids
        )
    }
}

impl Tokenizer {
    /// Train a byte-level BPE on `corpus` up to `vocab_size` ids (fewer if the corpus runs out of
    /// merges). An empty corpus is an error.
    pub fn train(corpus: &[String], vocab_size: usize) -> Result<Self> {
        if corpus.iter().all(|l| l.trim().is_empty()) {
            return Err(AgentError::Data(
                "cannot train a tokenizer on an empty corpus".into(),
            ));
        }
        let specials = [PAD, BOS, EOS, EOT]
            .iter()
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect::<Vec<_>>();
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(byte_level))
            .build()
            .map_err(tok_err)?;
        tk.train(&mut trainer, corpus.iter().map(|s| s.as_str()))
            .map_err(tok_err)?;
        let inner: tokenizers::Tokenizer = tk.into();
        Self::from_inner(inner, None)
    }

    /// The tokenizer with its special tokens, resolved as transformers resolves them: those `cfg`
    /// (a `tokenizer_config.json`) names, else aligngym's own. A config whose `bos_token` is null
    /// or absent (Qwen2's) means no BOS. BOS starts a prompt where the config's `add_bos_token`
    /// says so, else where the tokenizer's own post-processor adds it (Llama 3's template). PAD
    /// must differ from EOS: where the config names none (or names EOS, as many instruct models
    /// do), the first of aligngym's PAD, `<|endoftext|>`, `<pad>` and `<unk>` that the vocabulary
    /// has and that is not EOS.
    fn from_inner(inner: tokenizers::Tokenizer, cfg: Option<&serde_json::Value>) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                AgentError::Tokenizer(format!("the tokenizer has no special token `{t}`"))
            })
        };
        let bos_token = match cfg {
            Some(_) => token_field(cfg, "bos_token"),
            None => inner.token_to_id(BOS).map(|_| BOS.to_string()),
        };
        let eos_token = token_field(cfg, "eos_token").unwrap_or_else(|| EOS.to_string());
        let bos = bos_token.as_deref().map(id).transpose()?;
        let eos = id(&eos_token)?;
        let named_pad = token_field(cfg, "pad_token").and_then(|t| inner.token_to_id(&t));
        let pad = named_pad
            .into_iter()
            .chain(
                [PAD, "<|endoftext|>", "<pad>", "<unk>"]
                    .iter()
                    .filter_map(|t| inner.token_to_id(t)),
            )
            .find(|&p| p != eos)
            .ok_or_else(|| {
                AgentError::Tokenizer(
                    "PAD and EOS must be different tokens (add a padding token to the tokenizer)"
                        .into(),
                )
            })?;
        // Tokenizers from before multi-turn support have no end-of-turn token: their models end
        // every turn with EOS.
        let eot = inner.token_to_id(EOT).filter(|&t| t != pad && t != eos);
        let post_processor_adds_bos = || {
            let first = inner.encode("a", true).ok()?.get_ids().first().copied();
            Some(first == bos)
        };
        // aligngym's own tokenizers (no config yet) start every prompt with BOS.
        let add_bos = bos.is_some()
            && cfg.is_none_or(|c| {
                c.get("add_bos_token")
                    .and_then(|v| v.as_bool())
                    .or_else(post_processor_adds_bos)
                    .unwrap_or(false)
            });
        Ok(Self {
            inner,
            pad,
            bos,
            eos,
            eos_ids: vec![eos],
            eot,
            template: ChatTemplate::builtin(),
            bos_token: bos_token.unwrap_or_default(),
            eos_token,
            add_bos,
            chat_prompts: false,
        })
    }

    /// Add the ids that end a generation besides EOS (a `generation_config.json`'s
    /// `eos_token_id` list; Qwen2.5-Instruct's includes its PAD, which then ends a turn too).
    fn add_eos_ids(&mut self, ids: &[u32]) -> std::result::Result<(), String> {
        for &i in ids {
            if i as usize >= self.vocab_size() {
                return Err(format!(
                    "field `eos_token_id`: {i} is outside the tokenizer's {} ids",
                    self.vocab_size()
                ));
            }
            if !self.eos_ids.contains(&i) {
                self.eos_ids.push(i);
            }
        }
        Ok(())
    }

    /// A tokenizer built elsewhere (from a GGUF file's vocabulary), with the special tokens and
    /// chat template that `cfg` (shaped as `tokenizer_config.json`) names.
    pub fn from_parts(inner: tokenizers::Tokenizer, cfg: &serde_json::Value) -> Result<Self> {
        let mut tok = Self::from_inner(inner, Some(cfg))?;
        tok.apply_template(cfg)?;
        Ok(tok)
    }

    /// Take the chat template `cfg` carries (a model's own replaces the built-in one, and then
    /// prompts reach the model through it), checking that it renders a conversation.
    fn apply_template(&mut self, cfg: &serde_json::Value) -> Result<()> {
        match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(serde_json::Value::String(t)) => self.use_template(t),
            Some(_) => Err(AgentError::Tokenizer(
                "field `chat_template`: expected a string".into(),
            )),
        }
    }

    fn use_template(&mut self, source: &str) -> Result<()> {
        self.template = ChatTemplate::new(source)?;
        self.chat_prompts = source != crate::lm::chat_template::BUILTIN;
        let probe = [Message::user("hi")];
        self.template
            .render(&probe, true, &self.bos_token, &self.eos_token)
            .map(|_| ())
    }

    /// Load a standard `tokenizer.json`, with the special tokens and chat template of the
    /// `tokenizer_config.json` beside it (aligngym's own names where there is none).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = path.with_file_name(CONFIG_FILE);
        let cfg = read_json(&cfg_path)?;
        let mut tok = Self::from_inner(inner, cfg.as_ref())
            .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", path.display())))?;
        if let Some(cfg) = &cfg {
            tok.apply_template(cfg)
                .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", cfg_path.display())))?;
        }
        // transformers 5 saves the template in a file of its own, which wins over the config's.
        let jinja = path.with_file_name(TEMPLATE_FILE);
        if jinja.exists() {
            let source = std::fs::read_to_string(&jinja).map_err(|e| AgentError::io(&jinja, e))?;
            tok.use_template(&source)
                .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", jinja.display())))?;
        }
        // transformers' `generate` stops at the generation config's EOS ids, which it takes from
        // `config.json` where a checkpoint has no `generation_config.json`.
        for name in [hf::GENERATION_CONFIG, hf::CONFIG] {
            let file = path.with_file_name(name);
            if let Some(v) = read_json(&file)? {
                eos_token_ids(&v)
                    .and_then(|ids| tok.add_eos_ids(&ids))
                    .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", file.display())))?;
                break;
            }
        }
        Ok(tok)
    }

    /// Save as `tokenizer.json` at `path`, with `tokenizer_config.json` (special tokens and the
    /// chat template, as Hugging Face checkpoints carry them) beside it.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.inner
            .save(path, false)
            .map_err(|e| AgentError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg = path.with_file_name(CONFIG_FILE);
        let pad_token = self.inner.id_to_token(self.pad).unwrap_or_default();
        let v = serde_json::json!({
            "bos_token": self.bos.map(|_| &self.bos_token),
            "eos_token": self.eos_token,
            "pad_token": pad_token,
            "add_bos_token": self.add_bos,
            "additional_special_tokens": self.eot.map(|_| vec![EOT]).unwrap_or_default(),
            "chat_template": self.template.source(),
            "model_max_length": serde_json::Value::Null,
            "tokenizer_class": "PreTrainedTokenizerFast",
        });
        let text = serde_json::to_string_pretty(&v).map_err(|e| AgentError::Data(e.to_string()))?;
        std::fs::write(&cfg, text).map_err(|e| AgentError::io(&cfg, e))
    }

    /// The chat template (the checkpoint's, else the built-in one).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The ids an env's `message` adds after the conversation `before` (prompt first), rendered
    /// by the chat template: what the rollout collector appends, never re-tokenising the rest.
    pub fn message_ids(&self, before: &[Message], message: &Message) -> Result<Vec<u32>> {
        let text = self
            .template
            .appended(before, message, &self.bos_token, &self.eos_token)?;
        Ok(self.encode_ids(&text))
    }

    /// The ids of a whole conversation as the chat template renders it, and which of them are
    /// the assistant's own: its turns' text and what ends them, not the header the generation
    /// prompt opens (TRL's `assistant_only_loss`). aligngym's built-in format starts with BOS, as
    /// its prompts do.
    pub fn conversation_ids(&self, messages: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        use aligngym_envs::Role;
        if messages.first().is_none_or(|m| m.role == Role::Assistant) {
            return Err(AgentError::Data(
                "a conversation starts with a system or user message".into(),
            ));
        }
        let (bos, eos) = (self.bos_token.as_str(), self.eos_token.as_str());
        let render =
            |upto: usize, open: bool| self.template.render(&messages[..upto], open, bos, eos);
        let mut ids = Vec::new();
        let mut mine = Vec::new();
        if let Some(b) = self.bos.filter(|_| self.add_bos && !self.chat_prompts) {
            ids.push(b);
            mine.push(false);
        }
        let mut push = |text: &str, assistant: bool| {
            let part = self.encode_ids(text);
            mine.extend(std::iter::repeat_n(assistant, part.len()));
            ids.extend(part);
        };
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            let whole = render(i + 1, false)?;
            if m.role == Role::Assistant {
                let opened = render(i, true)?;
                let header = opened.strip_prefix(done.as_str());
                let body = whole.strip_prefix(opened.as_str());
                let (Some(header), Some(body)) = (header, body) else {
                    return Err(AgentError::Tokenizer(format!(
                        "chat_template: the assistant's message {i} does not continue the conversation before it and the generation prompt"
                    )));
                };
                push(header, false);
                push(body, true);
            } else {
                let Some(text) = whole.strip_prefix(done.as_str()) else {
                    return Err(AgentError::Tokenizer(format!(
                        "chat_template is not append-only: adding message {i} changes the text before it"
                    )));
                };
                push(text, false);
            }
            done = whole;
        }
        Ok((ids, mine))
    }

    /// Ids of `text` (no special tokens added).
    pub fn encode_ids(&self, text: &str) -> Vec<u32> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// How every prompt and training text starts: for an instruct model from elsewhere, the
    /// chat template's rendering of `prompt` as the user's message with the assistant's turn
    /// opened; for aligngym's models, `[BOS] + ids(prompt)`.
    pub fn encode_prompt(&self, prompt: &str) -> Vec<u32> {
        self.encode_prompt_as(prompt, PromptFormat::Auto)
    }

    /// `prompt`'s ids in the given format ([`PromptFormat::Auto`] is [`Tokenizer::encode_prompt`]).
    pub fn encode_prompt_as(&self, prompt: &str, format: PromptFormat) -> Vec<u32> {
        let chat = match format {
            PromptFormat::Auto => self.chat_prompts,
            PromptFormat::Chat => self.template.source() != crate::lm::chat_template::BUILTIN,
            PromptFormat::Raw => false,
        };
        if chat {
            let user = [Message::user(prompt)];
            // The template rendered a conversation when it was loaded, so this cannot fail on
            // one message; the bare text is the fallback all the same.
            if let Ok(text) = self
                .template
                .render(&user, true, &self.bos_token, &self.eos_token)
            {
                return self.encode_ids(&text);
            }
        }
        let mut ids = Vec::with_capacity(prompt.len() + 1);
        if let Some(bos) = self.bos.filter(|_| self.add_bos) {
            ids.push(bos);
        }
        ids.extend(self.encode_ids(prompt));
        ids
    }

    /// Whether prompts go through the chat template (an instruct model's own).
    pub fn chat_prompts(&self) -> bool {
        self.chat_prompts
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode_ids(&self, ids: &[u32]) -> String {
        self.inner.decode(ids, true).unwrap_or_default()
    }

    /// The BOS id, where the tokenizer has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether prompts start with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Every id that ends a generation: EOS, then the generation config's other EOS ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The end-of-turn id, when the tokenizer has one.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Ids of an assistant turn `content` as the policy would have written it: its text, then
    /// end-of-turn (EOS for a tokenizer without one). DPO, the reward model and replayed branches
    /// all encode a recorded turn this way.
    pub fn turn_ids(&self, content: &str) -> Vec<u32> {
        let mut ids = self.encode_ids(content);
        ids.push(self.eot.unwrap_or(self.eos));
        ids
    }

    /// The ids that end a policy turn: the EOS ids and, where there is one, end-of-turn.
    pub fn turn_stops(&self) -> Vec<u32> {
        self.eos_ids.iter().copied().chain(self.eot).collect()
    }
}

impl TextCodec for Tokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_ids(text)
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.decode_ids(ids)
    }
    fn eos_id(&self) -> u32 {
        self.eos
    }
    fn pad_id(&self) -> u32 {
        self.pad
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn trains_saves_and_loads() {
        let corpus: Vec<String> = (0..200)
            .map(|i| format!("the movie {} was great", i % 7))
            .collect();
        let t = Tokenizer::train(&corpus, 300).unwrap();
        assert!(t.vocab_size() <= 300 && t.vocab_size() > 259);
        let ids = t.encode_ids("the movie was great");
        assert!(ids.len() < "the movie was great".len());
        assert_eq!(t.decode_ids(&ids), "the movie was great");
        // Prompt then continuation tokenises like the whole text.
        let whole = t.encode_ids("the movie was great");
        let mut parts = t.encode_ids("the movie");
        parts.extend(t.encode_ids(" was great"));
        assert_eq!(whole, parts);
        let dir = std::env::temp_dir().join(format!("aligngym-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        t.save(dir.join("tokenizer.json")).unwrap();
        let u = Tokenizer::load(dir.join("tokenizer.json")).unwrap();
        assert_eq!(
            u.encode_ids("the movie 3+3=6"),
            t.encode_ids("the movie 3+3=6")
        );
        assert_eq!(
            (u.pad_id(), u.bos_id(), u.eos_id(), u.eot_id()),
            (t.pad_id(), t.bos_id(), t.eos_id(), t.eot_id())
        );
        assert!(t.eot_id().is_some());
        assert_eq!(
            u.chat_template().source(),
            crate::lm::chat_template::BUILTIN
        );
        // A checkpoint's own template replaces the built-in one; a broken one names the file.
        std::fs::write(
            dir.join(CONFIG_FILE),
            r#"{"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"}"#,
        )
        .unwrap();
        let v = Tokenizer::load(dir.join("tokenizer.json")).unwrap();
        let hi = aligngym_envs::Message::user("hi");
        assert_eq!(
            v.chat_template()
                .render(std::slice::from_ref(&hi), false, "", "")
                .unwrap(),
            "<user>hi"
        );
        assert_eq!(
            v.message_ids(
                std::slice::from_ref(&hi),
                &aligngym_envs::Message::assistant("yo")
            )
            .unwrap(),
            v.encode_ids("<assistant>yo")
        );
        std::fs::write(dir.join(CONFIG_FILE), r#"{"chat_template": "{% if %}"}"#).unwrap();
        let e = Tokenizer::load(dir.join("tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(CONFIG_FILE) && e.contains("chat_template"),
            "{e}"
        );
        std::fs::remove_file(dir.join(CONFIG_FILE)).unwrap();
        assert_ne!(t.pad_id(), t.eos_id());

        // Qwen2's `"bos_token": null`: nothing before the prompt; a template file beside the
        // tokenizer wins over the config's (transformers 5 writes one); the generation config's
        // EOS ids end generations and turns; an id past the vocabulary names the file.
        std::fs::write(
            dir.join(CONFIG_FILE),
            r#"{"bos_token": null, "eos_token": "<|eos|>", "chat_template": "{{ messages[0].content }}"}"#,
        )
        .unwrap();
        std::fs::write(dir.join(TEMPLATE_FILE), "[{{ messages[0].content }}]").unwrap();
        std::fs::write(
            dir.join(hf::GENERATION_CONFIG),
            r#"{"eos_token_id": [7, 2, 9]}"#,
        )
        .unwrap();
        let q = Tokenizer::load(dir.join("tokenizer.json")).unwrap();
        assert_eq!((q.bos_id(), q.adds_bos()), (None, false));
        assert_eq!(q.encode_prompt("hi"), q.encode_ids("[hi]"));
        assert_eq!(q.eos_id(), 2);
        assert_eq!(q.eos_ids(), &[2, 7, 9]);
        assert_eq!(q.turn_stops(), vec![2, 7, 9, q.eot_id().unwrap()]);
        std::fs::write(
            dir.join(hf::GENERATION_CONFIG),
            r#"{"eos_token_id": 99999}"#,
        )
        .unwrap();
        let e = Tokenizer::load(dir.join("tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(hf::GENERATION_CONFIG) && e.contains("eos_token_id") && e.contains("99999"),
            "{e}"
        );
        for f in [CONFIG_FILE, TEMPLATE_FILE, hf::GENERATION_CONFIG] {
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        assert!(Tokenizer::train(&[String::new()], 300).is_err());
        std::fs::write(dir.join("bad.json"), "{oops").unwrap();
        assert!(Tokenizer::load(dir.join("bad.json"))
            .unwrap_err()
            .to_string()
            .contains("bad.json"));
    }
}
