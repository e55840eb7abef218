//! Device selection: `auto` picks CUDA when it is usable; `cuda` fails loudly when it is not. Also
//! the compute precision, and how the process's CPU memory is recycled.

use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tch::Device;

/// Which device to compute on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA device; an error when none is usable.
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda),
            other => Err(format!(
                "unknown device `{other}`; expected auto, cpu or cuda"
            )),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        })
    }
}

impl DeviceChoice {
    /// The libtorch device for this choice.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Auto => Ok(if tch::Cuda::is_available() {
                tch::Device::Cuda(0)
            } else {
                tch::Device::Cpu
            }),
            Self::Cuda => {
                if tch::Cuda::is_available() {
                    Ok(tch::Device::Cuda(0))
                } else {
                    Err(AgentError::Device(
                        "--device cuda was asked for, but no CUDA device is usable (tch::Cuda::is_available() is false); use --device cpu or auto".into(),
                    ))
                }
            }
        }
    }
}

/// A human-readable name of a device.
pub fn describe(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        tch::Device::Cuda(i) => format!("cuda:{i} ({} devices)", tch::Cuda::device_count()),
        other => format!("{other:?}"),
    }
}

/// Arithmetic precision of forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere: the default, and the one the determinism tests use.
    #[default]
    Fp32,
    /// bf16 matmuls (on a CPU without native bf16, fp32 products of bf16 values rounded back to
    /// bf16) and, on a GPU, KV cache and decoding attention; the weights the optimiser updates,
    /// the LayerNorms, the residual stream, softmaxes, losses and attention in passes that take a
    /// backward stay fp32 (mixed precision with master weights).
    Bf16,
}

impl Precision {
    /// The tensor kind matmuls run in.
    pub fn kind(self) -> tch::Kind {
        match self {
            Self::Fp32 => tch::Kind::Float,
            Self::Bf16 => tch::Kind::BFloat16,
        }
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" | "f32" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown dtype `{other}`; expected fp32 or bf16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
        })
    }
}

/// The precision a command is asked for: `auto` (the default) measures the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtypeChoice {
    /// bf16 where the device runs its matmuls natively (CUDA with bf16; a CPU with AMX or
    /// AVX512-BF16), else fp32; decided by timing a matmul of each.
    #[default]
    Auto,
    /// This precision, whatever the device.
    Exactly(Precision),
}

impl FromStr for DtypeChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Exactly)
            .map_err(|_| format!("unknown dtype `{s}`; expected auto, fp32 or bf16"))
    }
}

impl std::fmt::Display for DtypeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Exactly(p) => p.fmt(f),
        }
    }
}

/// Whether `device` runs bf16 matmuls in hardware: a GPU (libtorch's own check refuses bf16 on
/// one that cannot), or a CPU with AVX512-BF16 or AMX-BF16, the instructions oneDNN's native bf16
/// kernels use. Read from the CPU's identification, not timed, so that the numerics a machine
/// picks never depend on how busy it was.
pub fn native_bf16(device: Device) -> bool {
    if device != Device::Cpu {
        return true;
    }
    // Every `compute_weights` call asks; CPUID serialises the pipeline, so it is read once.
    static CPU: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CPU.get_or_init(cpu_has_bf16)
}

/// The kind `precision`'s matmuls run their arithmetic in on `device`: its own, except bf16 on a
/// CPU without native bf16, which multiplies the same bf16 values in fp32 (see `model::MatmulKind`).
pub fn matmul_arithmetic(precision: Precision, device: Device) -> tch::Kind {
    match precision {
        Precision::Bf16 if !native_bf16(device) => tch::Kind::Float,
        p => p.kind(),
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_bf16() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 exists where the maximum basic leaf (leaf 0's EAX) reaches it; sub-leaf 1 likewise.
    let max_leaf = __cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let avx512_bf16 = leaf7.eax >= 1
        && __cpuid_count(7, 1).eax & (1 << 5) != 0
        && std::arch::is_x86_feature_detected!("avx512f");
    amx_bf16 || avx512_bf16
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_bf16() -> bool {
    std::arch::is_aarch64_feature_detected!("bf16")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_bf16() -> bool {
    false
}

/// The smallest model `auto` computes in bf16. Below it, fp32: on a 2-core CPU with AVX512-BF16
/// the tiny size's training steps were 1.35–1.7× faster in bf16 but its KV-cache sampling 1.6×
/// slower, and DPO from defaults learned less (arithmetic-v0: +0.011 gold against ≥ +0.03 in
/// fp32; guess-number-v0 pair accuracy 0.41 against > 0.5).
pub const BF16_MIN_PARAMS: usize = 50_000_000;

/// What `auto` picked, or how slow an explicit bf16 is, waiting to be said: a command says it
/// once when it succeeds ([`take_dtype_notice`]), so that a refusal stays one line.
static NOTICE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn notice(text: String) {
    let mut n = NOTICE.lock().unwrap_or_else(|e| e.into_inner());
    if n.is_none() {
        *n = Some(text);
    }
}

/// The first precision notice of this process, once.
pub fn take_dtype_notice() -> Option<String> {
    NOTICE.lock().unwrap_or_else(|e| e.into_inner()).take()
}

impl DtypeChoice {
    /// The precision to compute in on `device` for a model of `params` parameters. `auto` takes
    /// bf16 where the device runs it natively ([`native_bf16`]: read from CPUID, not timed) and the
    /// model has at least [`BF16_MIN_PARAMS`], and records what it picked and why; an explicit bf16 on a device that emulates it runs,
    /// recording the measured slowdown (see [`take_dtype_notice`]).
    pub fn resolve(self, device: Device, params: usize) -> Precision {
        let where_ = if device.is_cuda() {
            "this GPU"
        } else {
            "this CPU"
        };
        match self {
            Self::Auto => {
                // Decided from what the machine is (CPUID, the device) and the model's size,
                // never from a timing: a busy machine must not change a run's numerics.
                let native = native_bf16(device);
                let pick = if native && params >= BF16_MIN_PARAMS {
                    Precision::Bf16
                } else {
                    Precision::Fp32
                };
                let source = if device.is_cuda() {
                    "a GPU"
                } else if native {
                    "this CPU has AVX512-BF16 or AMX (CPUID)"
                } else {
                    "this CPU has no native bf16 (CPUID)"
                };
                notice(format!(
                    "dtype auto: {pick} ({source}; the model has {params} parameters, bf16 from {BF16_MIN_PARAMS} where native)"
                ));
                pick
            }
            Self::Exactly(Precision::Bf16) => {
                if !native_bf16(device) {
                    notice(format!(
                        "warning: {where_} has no native bf16 instructions: bf16 runs its matmuls as fp32 products of bf16 values, no faster than fp32 and with bf16's rounding; --dtype auto would pick fp32"
                    ));
                }
                Precision::Bf16
            }
            Self::Exactly(p) => p,
        }
    }
}

/// Keep freed CPU memory in the process for reuse instead of handing it back to the kernel.
///
/// libtorch's CPU tensors come from glibc's `malloc`, which by default maps every block above its
/// mmap threshold (32 MiB at most) on its own, unmaps it when freed, and trims the top of the heap:
/// the next step gets fresh pages the kernel must fault in and zero. At SmolLM2's size a training
/// pass frees and reallocates vocabulary-wide tensors of hundreds of MB each: the kernel's page
/// clearing was ≈ 19% of a bf16 SFT step (W4), and serving every block from the heap and never
/// trimming it took that step from 9.0–9.3 to 6.5–7.0 s (one interleaved A/B) for ≈ 10% more
/// peak memory.
/// Process-wide; call it once at start-up. Elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables and leaves existing allocations as they are:
    // M_MMAP_MAX 0 serves every request from the heap (a thread arena that cannot falls back to
    // the main one), M_TRIM_THRESHOLD -1 disables trimming (glibc documents both values).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// This machine's physical memory in bytes (0 where it cannot be read).
pub fn host_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
