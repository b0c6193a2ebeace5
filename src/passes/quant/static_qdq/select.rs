//! Which weights the static form quantizes: the selection less embedding tables (written in
//! the row form first), and less the narrow Convs that run slower as int8 on the target.

use super::Activations;
use crate::onnx::{self, Model};
use crate::passes::Skipped;
use crate::passes::qdq_chain;
use crate::passes::weights::{Selection, Weight, node_label, select_weights};
use std::collections::{HashMap, HashSet};

fn without_gather(sel: &Selection) -> Selection {
    Selection {
        ops: sel.ops.iter().filter(|o| *o != "Gather").cloned().collect(),
        ..sel.clone()
    }
}

/// Output channels per pass of ONNX Runtime 1.31's AVX2 int8 convolution kernel
/// (`MlasConvSymDispatchAvx2`: 16 channels a pass, the rest at half width).
const AVX2_CONV_CHANNELS: usize = 16;

/// The largest narrow Conv weight kept float (64 Ki values: at most 192 KiB more than int8).
const NARROW_CONV_MAX_WEIGHTS: usize = 65536;

/// Why a Conv stays float on x86 without VNNI: its output channels are not a multiple of 16.
/// ONNX Runtime's AVX2 int8 kernel (u8 x s8 `vpmaddubsw` + `vpmaddwd`, on AMD Zen one
/// multiply pipe) is at best even with its float NCHWc kernel (two FMA pipes, 8-channel
/// blocks), and the last partial block of 16 channels runs at half width: measured on a
/// 2-core AMD EPYC (AVX2, no VNNI), 1 thread, PP-OCRv4 det's 96 -> 24 3x3 Convs ran 1.33-1.39x
/// their float time and YOLOv8n's 64 -> 18 class Convs 1.4x, where Convs with 16, 32, 64, ...
/// output channels ran 0.96-1.19x. A float Conv between integer ones costs a DQ before and
/// a Q after it, which the narrow output keeps small. Only small weights (at most
/// [`NARROW_CONV_MAX_WEIGHTS`] values) stay float, so the size given up stays small: in
/// these models a narrow Conv with many weights has a long reduction over a small map
/// (PP-OCRv4 rec's 960 -> 60 1x3 Conv on a 1x40 map), where the time at stake is small too.
fn narrow_conv(w: &Weight) -> Option<String> {
    let conv = w.users.iter().any(|(_, op)| op == "Conv");
    let cout = *w.dims.first()?;
    (conv && cout % AVX2_CONV_CHANNELS != 0 && w.numel() <= NARROW_CONV_MAX_WEIGHTS).then(|| {
        format!(
            "Conv with {cout} output channels (not a multiple of {AVX2_CONV_CHANNELS}): ONNX              Runtime's int8 kernel on x86 without VNNI runs it slower than float; kept float              (spec.target.cpu auto or x86-avx2; x86-vnni quantizes it)"
        )
    })
}

/// The weights the static pass quantizes: the selection, less Convs that stay float on the
/// target ([`narrow_conv`]), each said in `skipped`.
pub(super) fn static_weights(
    a: &Activations,
    select: &Selection,
    model: &Model,
    skipped: &mut Vec<Skipped>,
) -> Vec<Weight> {
    let g = model.graph();
    let sel = without_gather(select);
    let mut weights = if a.small_convs {
        let all = Selection {
            min_elements: 0,
            ..sel.clone()
        };
        let mut weights = select_weights(model, &all, skipped);
        weights.retain(|w| {
            let convs = w.users.iter().all(|(_, op)| op == "Conv");
            let keep = convs || w.numel() as u64 >= sel.min_elements;
            if !keep {
                let (ni, _) = w.users[0];
                skipped.push(Skipped {
                    node: node_label(&g.node[ni], ni),
                    reason: format!(
                        "weight `{}` has {} elements, below minElements {}",
                        w.name,
                        w.numel(),
                        sel.min_elements
                    ),
                });
            }
            keep
        });
        weights
    } else {
        select_weights(model, &sel, skipped)
    };
    if a.narrow_convs_float {
        let mut narrow: Vec<(usize, String)> = weights
            .iter()
            .enumerate()
            .filter_map(|(i, w)| narrow_conv(w).map(|r| (i, r)))
            .collect();
        // ONNX Runtime fuses `DQ -> Conv -> Q` into QLinearConv whatever the weight's type:
        // a narrow Conv whose output (or the Relu/Clip after it) the plan quantizes anyway
        // runs integer, so it is quantized (its weights stored int8) instead.
        for _ in 0..4 {
            let float: HashSet<usize> = narrow.iter().map(|(i, _)| *i).collect();
            let kept: Vec<Weight> = weights
                .iter()
                .enumerate()
                .filter(|(i, _)| !float.contains(i))
                .map(|(_, w)| w.clone())
                .collect();
            let chain = qdq_chain::plan(g, &conv_users(&kept), a.symmetric);
            let quantized: HashSet<&str> = chain
                .tensors
                .iter()
                .map(|t| t.source.as_str())
                .chain(
                    kept.iter()
                        .flat_map(|w| w.users.iter().map(|(ni, _)| g.node[*ni].input[0].as_str())),
                )
                .collect();
            let consumers = onnx::consumers(g);
            let fused = |w: &Weight| {
                w.users.iter().any(|(ni, _)| {
                    let y = g.node[*ni].output[0].as_str();
                    quantized.contains(y)
                        || consumers.get(y).is_some_and(|c| {
                            c.iter().any(|(ri, _)| {
                                matches!(g.node[*ri].op_type.as_deref(), Some("Relu" | "Clip"))
                                    && quantized.contains(g.node[*ri].output[0].as_str())
                            })
                        })
                })
            };
            let before = narrow.len();
            narrow.retain(|(i, _)| !fused(&weights[*i]));
            if narrow.len() == before {
                break;
            }
        }
        let float: HashMap<usize, String> = narrow.into_iter().collect();
        let mut i = 0;
        weights.retain(|w| {
            let reason = float.get(&i);
            i += 1;
            match reason {
                Some(reason) => {
                    for (ni, _) in &w.users {
                        skipped.push(Skipped {
                            node: node_label(&g.node[*ni], *ni),
                            reason: reason.clone(),
                        });
                    }
                    false
                }
                None => true,
            }
        });
    }
    weights
}

/// The Conv nodes among the users of `weights`.
pub(super) fn conv_users(weights: &[Weight]) -> HashSet<usize> {
    weights
        .iter()
        .flat_map(|w| w.users.iter())
        .filter(|(_, op)| op == "Conv")
        .map(|(ni, _)| *ni)
        .collect()
}
