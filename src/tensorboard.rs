//! TensorBoard event files for `train --log tensorboard:DIR`: every metric as a scalar at its
//! step, the run's config as text. Written without TensorFlow or protobuf code generation: an
//! event file is TFRecord framing (length, masked CRC32C of the length, the record, masked CRC32C
//! of the record) around `Event` messages, and the few fields used here are encoded by hand:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
//! ```
//!
//! The whole file is rewritten (atomically) from the run's rows after every update, so a resumed
//! run's file holds each step once.

use crate::metrics::MetricRow;
use aligngym_agents::lm::fsio;
use aligngym_agents::Result;
use std::path::{Path, PathBuf};

/// The event file's name in the log folder (TensorBoard reads any `events.out.tfevents.*`).
pub const FILE: &str = "events.out.tfevents.aligngym";

/// CRC-32C (Castagnoli), bit by bit: TFRecord's checksum.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked checksum: rotated right by 15 and offset, so that a CRC of data holding
/// CRCs stays informative.
fn masked(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Field `field` of wire type `wire` (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What an event carries besides its time and step.
enum Body<'a> {
    /// The file's first event.
    Version,
    /// One scalar.
    Scalar(&'a str, f32),
    /// A text summary (the text plugin: a string tensor).
    Text(&'a str, &'a str),
}

fn event(wall_time: f64, step: u64, body: Body<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step);
    let mut value = Vec::new();
    match body {
        Body::Version => {
            bytes_field(&mut e, 3, b"brain.Event:2");
            return e;
        }
        Body::Scalar(tag, v) => {
            bytes_field(&mut value, 1, tag.as_bytes());
            key(&mut value, 2, 5);
            value.extend_from_slice(&v.to_le_bytes());
        }
        Body::Text(tag, text) => {
            bytes_field(&mut value, 1, tag.as_bytes());
            // TensorProto { dtype = DT_STRING (7); tensor_shape = {}; string_val = text }.
            let mut tensor = Vec::new();
            key(&mut tensor, 1, 0);
            varint(&mut tensor, 7);
            bytes_field(&mut tensor, 2, &[]);
            bytes_field(&mut tensor, 8, text.as_bytes());
            bytes_field(&mut value, 8, &tensor);
            // SummaryMetadata { plugin_data = { plugin_name = "text" } }.
            let mut plugin = Vec::new();
            bytes_field(&mut plugin, 1, b"text");
            let mut meta = Vec::new();
            bytes_field(&mut meta, 1, &plugin);
            bytes_field(&mut value, 9, &meta);
        }
    }
    let mut summary = Vec::new();
    bytes_field(&mut summary, 1, &value);
    bytes_field(&mut e, 5, &summary);
    e
}

/// `record` in TFRecord framing.
fn framed(out: &mut Vec<u8>, record: &[u8]) {
    let len = (record.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked(crc32c(&len)).to_le_bytes());
    out.extend_from_slice(record);
    out.extend_from_slice(&masked(crc32c(record)).to_le_bytes());
}

/// The event file of a run: the version, the config as text at step 0, then every row as a
/// scalar tagged with its metric name, all stamped `wall_time`.
pub fn events(rows: &[MetricRow], config: &str, wall_time: f64) -> Vec<u8> {
    let mut out = Vec::new();
    framed(&mut out, &event(wall_time, 0, Body::Version));
    framed(&mut out, &event(wall_time, 0, Body::Text("config", config)));
    for r in rows {
        let e = event(wall_time, r.step, Body::Scalar(&r.metric, r.value as f32));
        framed(&mut out, &e);
    }
    out
}

/// A run's TensorBoard log folder.
pub struct TensorBoard {
    dir: PathBuf,
    config: String,
    wall_time: f64,
}

impl TensorBoard {
    /// A log in `dir` for a run whose `config.json` reads `config`.
    pub fn new(dir: &Path, config: String) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| aligngym_agents::AgentError::io(dir, e))?;
        let wall_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            wall_time,
        })
    }

    /// Rewrite the event file with `rows` (all of the run's rows so far).
    pub fn write(&self, rows: &[MetricRow]) -> Result<()> {
        let bytes = events(rows, &self.config, self.wall_time);
        fsio::write_atomic(&self.dir.join(FILE), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_check_values() {
        // The CRC-32C check value (RFC 3720, appendix B.4) and its all-zero vector.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        // masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8, worked by hand for c = 1.
        assert_eq!(masked(1), 0x0002_0000 + 0xa282_ead8);
    }

    #[test]
    fn a_scalar_event_is_framed_and_encoded_field_by_field() {
        let e = event(0.0, 3, Body::Scalar("a", 1.0));
        // wall_time 0.0 (field 1, fixed64), step 3 (field 2, varint), summary (field 5):
        // Summary.value (field 1) = { tag "a" (field 1), simple_value 1.0 (field 2, fixed32) }.
        // The value is 3 + 5 = 8 bytes; the summary holding it 2 + 8 = 10.
        let want: Vec<u8> = [
            &[0x09][..],
            &[0; 8],
            &[0x10, 3],
            &[0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15],
            &1.0f32.to_le_bytes(),
        ]
        .concat();
        assert_eq!(e, want);
        let mut out = Vec::new();
        framed(&mut out, &e);
        assert_eq!(out.len(), 8 + 4 + e.len() + 4);
        assert_eq!(&out[..8], &(e.len() as u64).to_le_bytes());
        assert_eq!(&out[12..12 + e.len()], &e[..]);
    }

    #[test]
    fn varints_take_seven_bits_a_byte() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
