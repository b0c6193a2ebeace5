//! Where the model is served and what the worker pod gets.

use super::*;

/// Where the compressed model will be served: it decides integer forms that differ by CPU.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// The serving CPU. `auto` (unknown: the form that is exact on every CPU), `x86-vnni`
    /// (AVX512-VNNI, AVX-VNNI or AMX), `x86-avx2` (AVX2 without VNNI), `arm64`. Default auto.
    #[serde(default)]
    pub cpu: TargetCpu,
}

#[derive(
    schemars::JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum TargetCpu {
    #[default]
    #[serde(rename = "auto")]
    Auto,
    #[serde(rename = "x86-vnni")]
    X86Vnni,
    #[serde(rename = "x86-avx2")]
    X86Avx2,
    #[serde(rename = "arm64")]
    Arm64,
}

impl TargetCpu {
    /// Whether 8-bit weights multiply 8-bit activations without int16 saturation there.
    pub fn integer_matmul_exact(self) -> bool {
        matches!(self, TargetCpu::X86Vnni | TargetCpu::Arm64)
    }

    /// Whether ONNX Runtime's integer kernels there are fastest with uint8 activations (U8S8:
    /// x86's u8 x s8 multiply-add) rather than int8 (S8S8: arm64's signed dot product).
    pub fn uint8_activations(self) -> bool {
        !matches!(self, TargetCpu::Arm64)
    }
}

/// Compute for the worker pod.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesSpec {
    /// GPUs (nvidia.com/gpu). > 0 selects the GPU image and the CUDA execution provider.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 8").message("must be between 0 and 8"))]
    pub gpu: u32,
    /// CPU request and limit, e.g. "2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Memory request and limit, e.g. "4Gi". Default: sized from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Scratch space (emptyDir size limit), e.g. "20Gi". Default: sized from the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<String>,
}
