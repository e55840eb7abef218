//! Preference data: JSONL with `prompt`, `chosen`, `rejected` (extra fields kept), as in the common
//! preference data sets, read as a stream and written atomically. Two forms, both read by every
//! reader: plain text, and the conversational form TRL reads, where each field is a list of
//! `{"role", "content"}` messages (`chosen`/`rejected` may also hold the whole conversation, the
//! prompt then being their shared part before the first assistant message).

use crate::chat::{render_reply, transcript, Message, Role};
use crate::{EnvError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Longest line accepted (bytes); a longer line is an error rather than an allocation.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// One preference: for `prompt`, `chosen` is preferred to `rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// The prompt both completions answer.
    pub prompt: String,
    /// The preferred completion.
    pub chosen: String,
    /// The other completion.
    pub rejected: String,
    /// The conversational form, when the pair is one; `prompt`, `chosen` and `rejected` then hold
    /// its text as rewards read it (the prompt's first message, then the transcript).
    #[serde(skip)]
    pub conversation: Option<ConversationPair>,
    /// Any other fields of the line (e.g. `chosen_score`, `rejected_score`, `source`), kept as they are.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A preference between two continuations of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationPair {
    /// The conversation so far: system/user messages first, not ending with the assistant.
    pub prompt: Vec<Message>,
    /// The preferred continuation: assistant turns (and the env's replies between them).
    pub chosen: Vec<Message>,
    /// The other continuation.
    pub rejected: Vec<Message>,
}

/// The text of a prompt conversation as the built-in format reads it: the first message, then the
/// rest as replies.
pub fn prompt_text(prompt: &[Message]) -> String {
    let mut out = prompt
        .first()
        .map(|m| m.content.clone())
        .unwrap_or_default();
    for m in prompt.iter().skip(1) {
        out.push_str(&render_reply(m));
    }
    out
}

impl PreferencePair {
    /// A pair with no extra fields.
    pub fn new(
        prompt: impl Into<String>,
        chosen: impl Into<String>,
        rejected: impl Into<String>,
    ) -> Self {
        Self {
            prompt: prompt.into(),
            chosen: chosen.into(),
            rejected: rejected.into(),
            conversation: None,
            extra: Map::new(),
        }
    }

    /// A conversational pair (its text fields derived from the messages).
    pub fn conversational(c: ConversationPair) -> Self {
        Self {
            prompt: prompt_text(&c.prompt),
            chosen: transcript(&c.chosen),
            rejected: transcript(&c.rejected),
            conversation: Some(c),
            extra: Map::new(),
        }
    }

    /// One JSONL line: plain, or conversational when the pair is one (fields in the usual order).
    pub fn to_line(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Line<'a, T> {
            prompt: T,
            chosen: T,
            rejected: T,
            #[serde(flatten)]
            extra: &'a Map<String, Value>,
        }
        match &self.conversation {
            Some(c) => serde_json::to_string(&Line {
                prompt: &c.prompt,
                chosen: &c.chosen,
                rejected: &c.rejected,
                extra: &self.extra,
            }),
            None => serde_json::to_string(self),
        }
    }
}

/// Streams pairs from a JSONL file; each item is a pair or an error naming `file:line` and the field.
pub struct PrefReader<R> {
    path: PathBuf,
    reader: R,
    line: usize,
    buf: Vec<u8>,
}

impl PrefReader<BufReader<File>> {
    /// Open `path` for reading.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| EnvError::io(path, e))?;
        Ok(Self::new(path, BufReader::new(f)))
    }
}

impl<R: BufRead> PrefReader<R> {
    /// Read pairs from `reader`; `path` only names the source in errors.
    pub fn new(path: impl Into<PathBuf>, reader: R) -> Self {
        Self {
            path: path.into(),
            reader,
            line: 0,
            buf: Vec::new(),
        }
    }

    fn bad(&self, msg: impl Into<String>) -> EnvError {
        EnvError::BadData {
            path: self.path.clone(),
            line: self.line,
            msg: msg.into(),
        }
    }

    fn parse(&self, text: &str) -> Result<PreferencePair> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| self.bad(format!("invalid JSON: {e}")))?;
        let Value::Object(mut obj) = v else {
            return Err(
                self.bad("expected a JSON object with fields `prompt`, `chosen`, `rejected`")
            );
        };
        let conversational = ["prompt", "chosen", "rejected"]
            .iter()
            .any(|f| matches!(obj.get(*f), Some(Value::Array(_))));
        if conversational {
            let c = self.conversation(&mut obj)?;
            let mut p = PreferencePair::conversational(c);
            p.extra = obj;
            return Ok(p);
        }
        let mut take = |field: &str, allow_empty: bool| -> Result<String> {
            match obj.remove(field) {
                None => Err(self.bad(format!("missing field `{field}`"))),
                Some(Value::String(s)) if s.trim().is_empty() && !allow_empty => {
                    Err(self.bad(format!("field `{field}` is empty")))
                }
                Some(Value::String(s)) => Ok(s),
                Some(other) => Err(self.bad(format!(
                    "field `{field}`: expected a string, found {}",
                    kind(&other)
                ))),
            }
        };
        let prompt = take("prompt", true)?;
        let chosen = take("chosen", false)?;
        let rejected = take("rejected", false)?;
        Ok(PreferencePair {
            prompt,
            chosen,
            rejected,
            conversation: None,
            extra: obj,
        })
    }

    /// A list of `{role, content}` messages.
    fn messages(&self, field: &str, v: Value) -> Result<Vec<Message>> {
        let Value::Array(items) = v else {
            return Err(self.bad(format!(
                "field `{field}`: expected a list of messages, found {} (a pair is all text or all messages)",
                kind(&v)
            )));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let Value::Object(mut m) = m else {
                    return Err(self.bad(format!(
                        "field `{field}[{i}]`: expected a message {{\"role\", \"content\"}}, found {}",
                        kind(&m)
                    )));
                };
                let role = match m.remove("role") {
                    Some(Value::String(r)) => match r.as_str() {
                        "system" => Role::System,
                        "user" => Role::User,
                        "assistant" => Role::Assistant,
                        "tool" => Role::Tool,
                        _ => {
                            return Err(self.bad(format!(
                                "field `{field}[{i}].role`: unknown role `{r}` (expected system, user, assistant or tool)"
                            )))
                        }
                    },
                    Some(other) => {
                        return Err(self.bad(format!(
                            "field `{field}[{i}].role`: expected a string, found {}",
                            kind(&other)
                        )))
                    }
                    None => return Err(self.bad(format!("field `{field}[{i}]`: missing `role`"))),
                };
                match m.remove("content") {
                    Some(Value::String(content)) => Ok(Message { role, content }),
                    Some(other) => Err(self.bad(format!(
                        "field `{field}[{i}].content`: expected a string, found {}",
                        kind(&other)
                    ))),
                    None => Err(self.bad(format!("field `{field}[{i}]`: missing `content`"))),
                }
            })
            .collect()
    }

    /// The conversational form: explicit prompt, or the shared part of whole conversations.
    fn conversation(&self, obj: &mut Map<String, Value>) -> Result<ConversationPair> {
        let mut field = |f: &str| -> Result<Vec<Message>> {
            let v = obj
                .remove(f)
                .ok_or_else(|| self.bad(format!("missing field `{f}`")))?;
            self.messages(f, v)
        };
        let (mut chosen, mut rejected) = (field("chosen")?, field("rejected")?);
        let prompt = match obj.remove("prompt") {
            Some(v) => self.messages("prompt", v)?,
            None => {
                let split = |m: &[Message]| m.iter().position(|x| x.role == Role::Assistant);
                let (Some(a), Some(b)) = (split(&chosen), split(&rejected)) else {
                    return Err(self.bad(
                        "field `chosen`/`rejected`: no assistant turn to prefer (and no `prompt`)",
                    ));
                };
                if chosen[..a] != rejected[..b] {
                    return Err(self.bad(
                        "field `rejected`: without a `prompt`, chosen and rejected must share the messages before the first assistant turn",
                    ));
                }
                rejected.drain(..b);
                chosen.drain(..a).collect()
            }
        };
        self.check_prompt(&prompt)?;
        for (f, msgs) in [("chosen", &chosen), ("rejected", &rejected)] {
            self.check_continuation(f, msgs)?;
        }
        Ok(ConversationPair {
            prompt,
            chosen,
            rejected,
        })
    }

    /// A prompt conversation: system or user first, not ending with the assistant.
    fn check_prompt(&self, prompt: &[Message]) -> Result<()> {
        match prompt.first() {
            None => return Err(self.bad("field `prompt`: no messages")),
            Some(m) if !matches!(m.role, Role::System | Role::User) => {
                return Err(self.bad(format!(
                    "field `prompt[0]`: turns out of order: a conversation starts with a system or user message, not {}",
                    m.role.as_str()
                )))
            }
            _ => {}
        }
        if prompt.last().is_some_and(|m| m.role == Role::Assistant) {
            return Err(self.bad(
                "field `prompt`: turns out of order: the prompt ends with an assistant message (it belongs in the continuation)",
            ));
        }
        Ok(())
    }

    /// A continuation `f`: the assistant first, alternating with the others, not all empty.
    fn check_continuation(&self, f: &str, msgs: &[Message]) -> Result<()> {
        {
            if !msgs.iter().any(|m| m.role == Role::Assistant) {
                return Err(self.bad(format!("field `{f}`: no assistant turn")));
            }
            if msgs[0].role != Role::Assistant {
                return Err(self.bad(format!(
                    "field `{f}[0]`: turns out of order: a continuation starts with the assistant, not {}",
                    msgs[0].role.as_str()
                )));
            }
            for (i, w) in msgs.windows(2).enumerate() {
                if (w[0].role == Role::Assistant) == (w[1].role == Role::Assistant) {
                    return Err(self.bad(format!(
                        "field `{f}[{}]`: turns out of order: the assistant and the others must alternate ({} after {})",
                        i + 1,
                        w[1].role.as_str(),
                        w[0].role.as_str()
                    )));
                }
            }
            if msgs
                .iter()
                .all(|m| m.role != Role::Assistant || m.content.trim().is_empty())
            {
                return Err(self.bad(format!("field `{f}`: every assistant turn is empty")));
            }
        }
        Ok(())
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<R: BufRead> PrefReader<R> {
    /// The next non-blank line's text (a byte-order mark on the first line dropped).
    fn next_text(&mut self) -> Option<Result<String>> {
        loop {
            self.buf.clear();
            self.line += 1;
            let limit = (MAX_LINE_BYTES + 1) as u64;
            let n = match (&mut self.reader)
                .take(limit)
                .read_until(b'\n', &mut self.buf)
            {
                Ok(n) => n,
                Err(e) => return Some(Err(EnvError::io(&self.path, e))),
            };
            if n == 0 {
                return None;
            }
            if self.buf.len() > MAX_LINE_BYTES {
                // Skip the rest of this line so the next item starts on a fresh line.
                let mut sink = Vec::new();
                let _ = self.reader.read_until(b'\n', &mut sink);
                return Some(Err(
                    self.bad(format!("line longer than {MAX_LINE_BYTES} bytes"))
                ));
            }
            // A byte-order mark (as some editors write) is not part of the first line's JSON.
            if self.line == 1 && self.buf.starts_with(b"\xEF\xBB\xBF") {
                self.buf.drain(..3);
            }
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => t.trim(),
                Err(_) => return Some(Err(self.bad("not valid UTF-8"))),
            };
            if text.is_empty() {
                continue;
            }
            return Some(Ok(text.to_string()));
        }
    }

    /// The next line as KTO's unpaired examples: a line `{prompt, completion, label}` is one; a
    /// preference pair is two (chosen desirable, rejected not), as TRL unpairs a preference set.
    pub fn next_unpaired(&mut self) -> Option<Result<Vec<UnpairedExample>>> {
        let text = match self.next_text()? {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(self.parse_unpaired(&text))
    }

    fn parse_unpaired(&self, text: &str) -> Result<Vec<UnpairedExample>> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| self.bad(format!("invalid JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(self.bad(
                "expected a JSON object with fields `prompt`, `completion`, `label` (or a preference pair)",
            ));
        };
        if !obj.contains_key("label") && obj.contains_key("chosen") {
            let p = self.parse(text)?;
            let conv = |chosen: bool| {
                p.conversation.as_ref().map(|c| ConversationExample {
                    prompt: c.prompt.clone(),
                    completion: if chosen {
                        c.chosen.clone()
                    } else {
                        c.rejected.clone()
                    },
                })
            };
            return Ok(vec![
                UnpairedExample {
                    prompt: p.prompt.clone(),
                    completion: p.chosen.clone(),
                    label: true,
                    conversation: conv(true),
                },
                UnpairedExample {
                    prompt: p.prompt.clone(),
                    completion: p.rejected.clone(),
                    label: false,
                    conversation: conv(false),
                },
            ]);
        }
        let label = match obj.get("label") {
            None => return Err(self.bad("missing field `label`")),
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(self.bad(format!(
                    "field `label`: expected true or false, found {}",
                    kind(other)
                )))
            }
        };
        let conversational = ["prompt", "completion"]
            .iter()
            .any(|f| matches!(obj.get(*f), Some(Value::Array(_))));
        if conversational {
            let field = |f: &str| -> Result<Vec<Message>> {
                let v = obj
                    .get(f)
                    .cloned()
                    .ok_or_else(|| self.bad(format!("missing field `{f}`")))?;
                self.messages(f, v)
            };
            let (prompt, completion) = (field("prompt")?, field("completion")?);
            self.check_prompt(&prompt)?;
            self.check_continuation("completion", &completion)?;
            return Ok(vec![UnpairedExample {
                prompt: prompt_text(&prompt),
                completion: transcript(&completion),
                label,
                conversation: Some(ConversationExample { prompt, completion }),
            }]);
        }
        let text_field = |field: &str, allow_empty: bool| -> Result<String> {
            match obj.get(field) {
                None => Err(self.bad(format!("missing field `{field}`"))),
                Some(Value::String(s)) if s.trim().is_empty() && !allow_empty => {
                    Err(self.bad(format!("field `{field}` is empty")))
                }
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(self.bad(format!(
                    "field `{field}`: expected a string, found {}",
                    kind(other)
                ))),
            }
        };
        let prompt = text_field("prompt", true)?;
        let completion = text_field("completion", false)?;
        Ok(vec![UnpairedExample {
            prompt,
            completion,
            label,
            conversation: None,
        }])
    }
}

/// One example of KTO's unpaired data: a completion and whether it is desirable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedExample {
    /// The prompt.
    pub prompt: String,
    /// The completion.
    pub completion: String,
    /// Desirable (`true`) or undesirable.
    pub label: bool,
    /// The conversational form, when the example is one; `prompt` and `completion` then hold its
    /// text as rewards read it.
    pub conversation: Option<ConversationExample>,
}

/// A conversational example of KTO's unpaired data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationExample {
    /// The conversation so far: system/user messages first, not ending with the assistant.
    pub prompt: Vec<Message>,
    /// The continuation judged: assistant turns (and the env's replies between them).
    pub completion: Vec<Message>,
}

/// Read KTO's unpaired examples (JSONL lines `{"prompt", "completion", "label": bool}`, plain text
/// or conversational — lists of `{role, content}` messages — or preference pairs, each two
/// examples); the first bad line is the error, as is a file without examples, without both labels,
/// or mixing text and conversations.
pub fn read_unpaired(path: impl AsRef<Path>) -> Result<Vec<UnpairedExample>> {
    let path = path.as_ref();
    let mut r = PrefReader::open(path)?;
    let mut out = Vec::new();
    while let Some(x) = r.next_unpaired() {
        out.extend(x?);
    }
    let bad = |msg: &str| EnvError::BadData {
        path: path.to_path_buf(),
        line: 0,
        msg: msg.into(),
    };
    if out.is_empty() {
        return Err(bad("no examples in file"));
    }
    if out.iter().any(|e| e.conversation.is_some()) && out.iter().any(|e| e.conversation.is_none())
    {
        return Err(bad(
            "a file of examples is all text or all conversations (KTO contrasts each example with another's completion)",
        ));
    }
    if !out.iter().any(|e| e.label) || out.iter().all(|e| e.label) {
        return Err(bad(
            "KTO needs both desirable (`label: true`) and undesirable (`label: false`) examples",
        ));
    }
    Ok(out)
}

/// One example of an SFT data file, in the three forms TRL's `SFTTrainer` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftRecord {
    /// `{"text"}`: language modelling, every token trained on.
    Text(String),
    /// `{"prompt", "completion"}`: only the completion trained on (TRL's `completion_only_loss`).
    PromptCompletion {
        /// The prompt, presented as rollouts present a task's prompt.
        prompt: String,
        /// The answer learned.
        completion: String,
    },
    /// `{"messages": [{role, content}, …]}`: rendered by the chat template, only the assistant's
    /// turns trained on (TRL's `assistant_only_loss`).
    Conversation(Vec<Message>),
}

impl<R: BufRead> PrefReader<R> {
    /// The next line as an SFT example.
    pub fn next_sft(&mut self) -> Option<Result<SftRecord>> {
        let text = match self.next_text()? {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(self.parse_sft(&text))
    }

    fn parse_sft(&self, text: &str) -> Result<SftRecord> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| self.bad(format!("invalid JSON: {e}")))?;
        let Value::Object(mut obj) = v else {
            return Err(self.bad(
                "expected a JSON object with `text`, `prompt` and `completion`, or `messages`",
            ));
        };
        let string = |obj: &mut Map<String, Value>, field: &str| -> Result<String> {
            match obj.remove(field) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
                Some(Value::String(_)) => Err(self.bad(format!("field `{field}` is empty"))),
                Some(other) => Err(self.bad(format!(
                    "field `{field}`: expected a string, found {}",
                    kind(&other)
                ))),
                None => Err(self.bad(format!("missing field `{field}`"))),
            }
        };
        if let Some(messages) = obj.remove("messages") {
            let messages = self.messages("messages", messages)?;
            if !messages.iter().any(|m| m.role == Role::Assistant) {
                return Err(
                    self.bad("field `messages`: no assistant message (nothing to learn from)")
                );
            }
            return Ok(SftRecord::Conversation(messages));
        }
        if obj.contains_key("completion") {
            let prompt = string(&mut obj, "prompt")?;
            let completion = string(&mut obj, "completion")?;
            return Ok(SftRecord::PromptCompletion { prompt, completion });
        }
        if obj.contains_key("text") {
            return Ok(SftRecord::Text(string(&mut obj, "text")?));
        }
        Err(self.bad("expected a field `text`, `prompt` and `completion`, or `messages`"))
    }
}

/// Read an SFT data file (JSONL: `{"text"}`, `{"prompt", "completion"}` or `{"messages"}` per
/// line, forms mixed freely); the first bad line is the error, as is a file without examples.
pub fn read_sft(path: impl AsRef<Path>) -> Result<Vec<SftRecord>> {
    let path = path.as_ref();
    let mut r = PrefReader::open(path)?;
    let mut out = Vec::new();
    while let Some(x) = r.next_sft() {
        out.push(x?);
    }
    if out.is_empty() {
        return Err(EnvError::BadData {
            path: path.to_path_buf(),
            line: 0,
            msg: "no examples in file".into(),
        });
    }
    Ok(out)
}

impl<R: BufRead> Iterator for PrefReader<R> {
    type Item = Result<PreferencePair>;
    fn next(&mut self) -> Option<Self::Item> {
        let text = match self.next_text()? {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        Some(self.parse(&text))
    }
}

/// Read every pair of a file; the first bad line is the error. An empty file is an error too.
pub fn read_pairs(path: impl AsRef<Path>) -> Result<Vec<PreferencePair>> {
    let path = path.as_ref();
    let pairs = PrefReader::open(path)?.collect::<Result<Vec<_>>>()?;
    if pairs.is_empty() {
        return Err(EnvError::BadData {
            path: path.to_path_buf(),
            line: 0,
            msg: "no preference pairs in file".into(),
        });
    }
    Ok(pairs)
}

/// Writes pairs to a hidden temporary sibling (`.NAME.aligngym-tmp-PID`) and renames it to `path`
/// on [`PrefWriter::finish`], so a failed run never leaves a half-written file under the real name.
pub struct PrefWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    finished: bool,
}

impl PrefWriter {
    /// Start writing `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        // A hidden sibling with aligngym's own suffix (as `write_atomic`'s), so a user's
        // `prefs.jsonl.tmp` beside `--out prefs.jsonl` is never overwritten or removed.
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.aligngym-tmp-{}", std::process::id()));
        let f = File::create(&tmp).map_err(|e| EnvError::io(&tmp, e))?;
        Ok(Self {
            path,
            tmp,
            out: BufWriter::new(f),
            finished: false,
        })
    }
    /// Append one pair as a JSON line.
    pub fn write(&mut self, pair: &PreferencePair) -> Result<()> {
        let line = pair.to_line().map_err(|e| EnvError::BadData {
            path: self.path.clone(),
            line: 0,
            msg: format!("cannot serialise pair: {e}"),
        })?;
        writeln!(self.out, "{line}").map_err(|e| EnvError::io(&self.tmp, e))
    }
    /// Flush to disk (fsync) and move the file into place; a full disk is an error here, never a
    /// truncated file in place.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.out.flush().map_err(|e| EnvError::io(&self.tmp, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| EnvError::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| EnvError::io(&self.path, e))?;
        self.finished = true;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The rename is durable once its folder is flushed.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(self.path.clone())
    }
}

impl Drop for PrefWriter {
    /// A writer dropped unfinished (an error on the way) leaves no temporary behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write all `pairs` to `path` atomically.
pub fn write_pairs(path: impl AsRef<Path>, pairs: &[PreferencePair]) -> Result<PathBuf> {
    let mut w = PrefWriter::create(path)?;
    for p in pairs {
        w.write(p)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("aligngym-prefs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_keeps_extra_fields() {
        let d = tmpdir("rt");
        let mut p = PreferencePair::new("a film", " so good", " so bad");
        p.extra
            .insert("chosen_score".into(), serde_json::json!(0.5));
        p.extra.insert("source".into(), serde_json::json!("test"));
        let pairs = vec![p, PreferencePair::new("", "x \"quoted\"\n", "y")];
        // A user's file with the old temporary's name is left alone.
        std::fs::write(d.join("p.jsonl.tmp"), "mine").unwrap();
        let path = write_pairs(d.join("p.jsonl"), &pairs).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("p.jsonl.tmp")).unwrap(),
            "mine"
        );
        let names: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("aligngym-tmp")),
            "{names:?}"
        );
        assert_eq!(read_pairs(&path).unwrap(), pairs);
    }

    fn first_err(content: &[u8]) -> String {
        let r = PrefReader::new("data.jsonl", std::io::Cursor::new(content.to_vec()));
        r.filter_map(|x| x.err())
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn malformed_lines_name_file_line_and_field() {
        let ok = r#"{"prompt":"p","chosen":"a","rejected":"b"}"#;
        let cases: Vec<(String, &str)> = vec![
            (format!("{ok}\n{{not json\n"), "data.jsonl:2: invalid JSON"),
            (
                format!("{ok}\n\n{{\"prompt\":\"p\",\"chosen\":\"a\"}}\n"),
                "data.jsonl:3: missing field `rejected`",
            ),
            (
                r#"{"prompt":"p","chosen":1,"rejected":"b"}"#.to_string(),
                "data.jsonl:1: field `chosen`: expected a string, found a number",
            ),
            (
                r#"{"prompt":"p","chosen":"a","rejected":"  "}"#.to_string(),
                "data.jsonl:1: field `rejected` is empty",
            ),
            ("[1,2]".to_string(), "data.jsonl:1: expected a JSON object"),
            (
                format!(
                    "{{\"prompt\":\"{}\"}}\n{ok}",
                    "x".repeat(MAX_LINE_BYTES + 10)
                ),
                "data.jsonl:1: line longer than",
            ),
        ];
        for (content, want) in cases {
            let got = first_err(content.as_bytes());
            assert!(got.starts_with(want), "want `{want}`, got `{got}`");
        }
    }

    #[test]
    fn conversational_pairs_round_trip_and_bad_ones_name_the_field() {
        let d = tmpdir("conv");
        let c = ConversationPair {
            prompt: vec![
                Message::new(Role::System, "be brief"),
                Message::user("guess"),
            ],
            chosen: vec![
                Message::assistant(" 8"),
                Message::user("higher"),
                Message::assistant(" 12"),
            ],
            rejected: vec![Message::assistant(" 1")],
        };
        let mut p = PreferencePair::conversational(c.clone());
        p.extra.insert("source".into(), serde_json::json!("t"));
        assert_eq!(p.prompt, "be brief\nuser: guess\n");
        assert_eq!(p.chosen, " 8\nuser: higher\n 12");
        let path = write_pairs(
            d.join("c.jsonl"),
            &[p.clone(), PreferencePair::new("a", "b", "c")],
        )
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(r#"{"prompt":[{"role":"system","content":"be brief"}"#),
            "{text}"
        );
        assert_eq!(read_pairs(&path).unwrap()[0], p);
        // The whole conversation in chosen/rejected: the shared part becomes the prompt.
        let whole = r#"{"chosen":[{"role":"user","content":"q"},{"role":"assistant","content":"a"}],"rejected":[{"role":"user","content":"q"},{"role":"assistant","content":"b"}]}"#;
        let r: Vec<_> =
            PrefReader::new("w", std::io::Cursor::new(whole.as_bytes().to_vec())).collect();
        let got = r[0].as_ref().unwrap().conversation.clone().unwrap();
        assert_eq!(got.prompt, vec![Message::user("q")]);
        assert_eq!(got.rejected, vec![Message::assistant("b")]);
        let cases = [
            (
                r#"{"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"bot","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `chosen[0].role`: unknown role `bot`",
            ),
            (
                r#"{"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"user","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `chosen`: no assistant turn",
            ),
            (
                r#"{"prompt":[{"role":"user","content":"q"}],"chosen":[{"role":"assistant","content":"a"},{"role":"assistant","content":"c"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `chosen[1]`: turns out of order",
            ),
            (
                r#"{"prompt":[{"role":"assistant","content":"q"}],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `prompt[0]`: turns out of order",
            ),
            (
                r#"{"prompt":[{"role":"user","content":"q"}],"chosen":"a","rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `chosen`: expected a list of messages",
            ),
            (
                r#"{"prompt":[{"role":"user"}],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
                "data.jsonl:1: field `prompt[0]`: missing `content`",
            ),
        ];
        for (content, want) in cases {
            let got = first_err(content.as_bytes());
            assert!(got.starts_with(want), "want `{want}`, got `{got}`");
        }
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let ok = "\u{feff}{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n";
        let items: Vec<_> =
            PrefReader::new("bom", std::io::Cursor::new(ok.as_bytes().to_vec())).collect();
        assert_eq!(items[0].as_ref().unwrap().prompt, "p");
    }

    #[test]
    fn huge_line_does_not_poison_the_next() {
        let ok = r#"{"prompt":"p","chosen":"a","rejected":"b"}"#;
        let content = format!("{}\n{ok}\n", "x".repeat(MAX_LINE_BYTES + 10));
        let items: Vec<_> =
            PrefReader::new("f", std::io::Cursor::new(content.into_bytes())).collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_err());
        assert_eq!(items[1].as_ref().unwrap().chosen, "a");
    }

    #[test]
    fn empty_file_is_an_error() {
        let d = tmpdir("empty");
        std::fs::write(d.join("e.jsonl"), "\n\n").unwrap();
        let e = read_pairs(d.join("e.jsonl")).unwrap_err().to_string();
        assert!(
            e.contains("e.jsonl") && e.contains("no preference pairs"),
            "{e}"
        );
    }

    #[test]
    fn sft_reads_text_prompt_completion_and_messages_and_names_bad_lines() {
        let d = tmpdir("sft");
        let f = d.join("s.jsonl");
        std::fs::write(
            &f,
            "{\"text\":\"a b\"}\n\n{\"prompt\":\"2+2=\",\"completion\":\"4\"}\n\
             {\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n",
        )
        .unwrap();
        let got = read_sft(&f).unwrap();
        assert_eq!(
            got,
            vec![
                SftRecord::Text("a b".into()),
                SftRecord::PromptCompletion {
                    prompt: "2+2=".into(),
                    completion: "4".into()
                },
                SftRecord::Conversation(vec![
                    Message::new(Role::System, "be brief"),
                    Message::user("hi"),
                    Message::assistant("yo"),
                ]),
            ]
        );
        for (line, expected) in [
            ("{\"prompt\":\"p\"}", "s.jsonl:2: expected a field `text`"),
            (
                "{\"prompt\":\"p\",\"completion\":3}",
                "s.jsonl:2: field `completion`: expected a string, found a number",
            ),
            (
                "{\"completion\":\"c\"}",
                "s.jsonl:2: missing field `prompt`",
            ),
            (
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                "s.jsonl:2: field `messages`: no assistant message",
            ),
            (
                "{\"messages\":[{\"role\":\"bot\",\"content\":\"hi\"}]}",
                "s.jsonl:2: field `messages[0].role`: unknown role `bot`",
            ),
            ("[1]", "s.jsonl:2: expected a JSON object"),
        ] {
            std::fs::write(&f, format!("{{\"text\":\"ok\"}}\n{line}\n")).unwrap();
            let e = read_sft(&f).unwrap_err().to_string();
            assert!(e.contains(expected), "{e} lacks {expected}");
        }
        std::fs::write(&f, "\n").unwrap();
        assert!(read_sft(&f)
            .unwrap_err()
            .to_string()
            .contains("no examples"));
    }

    #[test]
    fn kto_reads_unpaired_lines_and_unpairs_pairs() {
        let d = tmpdir("kto");
        let f = d.join("k.jsonl");
        std::fs::write(
            &f,
            "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"q\",\"completion\":\"c\",\"label\":false}\n",
        )
        .unwrap();
        let ex = read_unpaired(&f).unwrap();
        let got: Vec<(&str, &str, bool)> = ex
            .iter()
            .map(|e| (e.prompt.as_str(), e.completion.as_str(), e.label))
            .collect();
        assert_eq!(
            got,
            vec![("p", "a", true), ("p", "b", false), ("q", "c", false)]
        );
        // One label only: nothing to contrast.
        std::fs::write(
            &f,
            "{\"prompt\":\"q\",\"completion\":\"c\",\"label\":true}\n",
        )
        .unwrap();
        let e = read_unpaired(&f).unwrap_err().to_string();
        assert!(e.contains("both desirable"), "{e}");
        std::fs::write(&f, "{\"prompt\":\"q\",\"label\":true}\n").unwrap();
        let e = read_unpaired(&f).unwrap_err().to_string();
        assert!(e.contains("k.jsonl:1: missing field `completion`"), "{e}");
    }

    #[test]
    fn kto_reads_conversational_examples_and_pairs() {
        let d = tmpdir("kto-conv");
        let f = d.join("c.jsonl");
        let user = r#"[{"role":"user","content":"guess 1..8"}]"#;
        std::fs::write(
            &f,
            format!(
                "{{\"prompt\":{user},\"completion\":[{{\"role\":\"assistant\",\"content\":\"4\"}},{{\"role\":\"user\",\"content\":\"higher\"}},{{\"role\":\"assistant\",\"content\":\"6\"}}],\"label\":true}}\n\
                 {{\"prompt\":{user},\"chosen\":[{{\"role\":\"assistant\",\"content\":\"4\"}}],\"rejected\":[{{\"role\":\"assistant\",\"content\":\"1\"}}]}}\n"
            ),
        )
        .unwrap();
        let ex = read_unpaired(&f).unwrap();
        assert_eq!(ex.len(), 3);
        let c = ex[0].conversation.as_ref().unwrap();
        assert_eq!(c.completion.len(), 3);
        assert_eq!(c.completion[1].content, "higher");
        assert_eq!(ex[0].prompt, "guess 1..8");
        assert!(ex[0].label && ex[1].label && !ex[2].label);
        assert_eq!(
            ex[2].conversation.as_ref().unwrap().completion[0].content,
            "1"
        );
        // A continuation must open with the assistant.
        std::fs::write(
            &f,
            format!("{{\"prompt\":{user},\"completion\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"label\":true}}\n"),
        )
        .unwrap();
        let e = read_unpaired(&f).unwrap_err().to_string();
        assert!(e.contains("c.jsonl:1: field `completion"), "{e}");
        // Text and conversations do not mix in one file.
        std::fs::write(
            &f,
            format!(
                "{{\"prompt\":{user},\"completion\":[{{\"role\":\"assistant\",\"content\":\"4\"}}],\"label\":true}}\n{{\"prompt\":\"q\",\"completion\":\"c\",\"label\":false}}\n"
            ),
        )
        .unwrap();
        let e = read_unpaired(&f).unwrap_err().to_string();
        assert!(e.contains("all text or all conversations"), "{e}");
    }
}
