//! The one table of ops whose weights passes touch: names a spec may use, each op's weight
//! input and the weight ranks it takes. Validation, the passes and `inspect` all read it, so
//! supporting an op is one row here (plus its rewrite in the pass that emits it).

/// An op whose weight (an initializer input) passes can compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightOp {
    /// ONNX op type (default domain).
    pub op: &'static str,
    /// Input slot of the weight.
    pub weight_input: usize,
    /// Smallest and largest weight rank handled.
    pub ranks: (usize, usize),
    /// Quantized by default (`quantize.ops` unset).
    pub quantize_default: bool,
    /// Pruned by default (`prune.ops` unset).
    pub prune_default: bool,
}

pub const WEIGHT_OPS: &[WeightOp] = &[
    WeightOp {
        op: "MatMul",
        weight_input: 1,
        ranks: (2, 2),
        quantize_default: true,
        prune_default: true,
    },
    WeightOp {
        op: "Gemm",
        weight_input: 1,
        ranks: (2, 2),
        quantize_default: true,
        prune_default: true,
    },
    // Conv is quantized only when asked: ONNX Runtime's ConvInteger is often slower than
    // float Conv on CPU, so dynamic mode stores Conv weights weight-only.
    WeightOp {
        op: "Conv",
        weight_input: 1,
        ranks: (3, 5),
        quantize_default: false,
        prune_default: true,
    },
    // Transposed convolution (decoders, upsampling heads): weight [C_in, C_out/group, k...].
    // ONNX Runtime has no integer ConvTranspose kernel on CPU, so quantize stores it int8 and
    // dequantizes it (size, not speed); asked for explicitly, like Conv.
    WeightOp {
        op: "ConvTranspose",
        weight_input: 1,
        ranks: (3, 5),
        quantize_default: false,
        prune_default: false,
    },
    // Embedding tables (`Gather` data [V, D], axis 0): most of a transformer's bytes. Stored
    // int8 with the gathered rows dequantized (no integer Gather kernel helps speed: the
    // point is size). Not pruned by default: zeroed rows change every token that reads them.
    WeightOp {
        op: "Gather",
        weight_input: 0,
        ranks: (2, 2),
        quantize_default: true,
        prune_default: false,
    },
];

/// The row of `op`, if passes support it.
pub fn weight_op(op: &str) -> Option<&'static WeightOp> {
    WEIGHT_OPS.iter().find(|w| w.op == op)
}

/// Every supported op name, for messages.
pub fn names() -> String {
    WEIGHT_OPS
        .iter()
        .map(|w| w.op)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ops a pass touches when its spec names none.
pub fn defaults(quantize: bool) -> Vec<String> {
    WEIGHT_OPS
        .iter()
        .filter(|w| {
            if quantize {
                w.quantize_default
            } else {
                w.prune_default
            }
        })
        .map(|w| w.op.to_string())
        .collect()
}
