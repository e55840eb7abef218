//! Text ↔ token-id conversion, as seen by environments.
//!
//! Environments act on token ids (`u32`) but rule rewards read text, so an env needs a way to
//! decode. The learned tokenizer lives in the agents crate (it implements [`TextCodec`]); this crate
//! stays free of it, and of libtorch, by depending only on this trait.

/// Encodes text to token ids and decodes them back; names the special tokens.
pub trait TextCodec: Send + Sync {
    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Text of `ids`, skipping special tokens.
    fn decode(&self, ids: &[u32]) -> String;
    /// End-of-sequence id: emitting it terminates an episode.
    fn eos_id(&self) -> u32;
    /// Padding id; never equal to [`TextCodec::eos_id`].
    fn pad_id(&self) -> u32;
    /// Number of ids (valid ids are `0..vocab_size`).
    fn vocab_size(&self) -> usize;
}

/// A byte-level codec with no training: id = byte + 2, PAD = 0, EOS = 1.
///
/// Used by tests and by anyone who wants an env without a learned tokenizer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ByteCodec;

impl ByteCodec {
    const OFFSET: u32 = 2;
}

impl TextCodec for ByteCodec {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(|b| b as u32 + Self::OFFSET).collect()
    }
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&i| (Self::OFFSET..Self::OFFSET + 256).contains(&i))
            .map(|&i| (i - Self::OFFSET) as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn eos_id(&self) -> u32 {
        1
    }
    fn pad_id(&self) -> u32 {
        0
    }
    fn vocab_size(&self) -> usize {
        256 + Self::OFFSET as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn byte_codec_round_trips_and_skips_specials() {
        let c = ByteCodec;
        let mut ids = c.encode("héllo");
        ids.push(c.eos_id());
        ids.insert(0, c.pad_id());
        assert_eq!(c.decode(&ids), "héllo");
        assert_ne!(c.eos_id(), c.pad_id());
    }
}
