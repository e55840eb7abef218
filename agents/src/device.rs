//! Device selection: `auto` picks CUDA when it is usable; `cuda` fails loudly when it is not. Also
//! the compute precision, and how the process's CPU memory is recycled.

use crate::{AgentError, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

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
    /// bf16 matmuls and KV cache (and attention while decoding); the weights the optimiser
    /// updates, the LayerNorms, the residual stream, softmaxes, losses and attention in passes that
    /// take a backward stay fp32 (mixed precision with master weights).
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

/// Keep freed CPU memory in the process for reuse instead of handing it back to the kernel.
///
/// libtorch's CPU tensors come from glibc's `malloc`, which by default returns large freed blocks
/// to the kernel (unmapping them, or trimming the top of the heap) and gets fresh zeroed pages at
/// the next step: measured on a 2-core CPU, page faults and their locks were ≈10% of a bf16 SFT step
/// at the small size, and raising these thresholds made that step 1.17× faster (fp32 SFT tiny 1.09×,
/// DPO tiny 1.04×; sampling unchanged). Process-wide; call it once at start-up. Elsewhere than
/// glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables; glibc accepts these values (the mmap threshold
    // at its 32 MiB maximum) and leaves existing allocations as they are.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
