//! Embedding tables (`Y = Gather(W, ids)` on axis 0), in every form: the table is stored
//! quantized and only the rows a lookup reads are dequantized, after it.
//!
//! - int8 (dynamic, weight-only and static forms), per tensor:
//!   `DequantizeLinear(Gather(W_q, ids), scale)`; per row:
//!   `Mul(Cast(Gather(W_q, ids)), Gather(scales[V, 1], ids))` (the gathered scales have shape
//!   ids.shape + [1], which broadcasts over the row).
//! - int4: `GatherBlockQuantized` on the table's rows packed in blocks (see `int4`).

use crate::onnx::{self, attr_int, f32_tensor, pb};
use crate::passes::Skipped;
use crate::passes::rewrite::Rewrite;
use crate::passes::weights::{Weight, node_label};

/// What the int8 forms add to their description when they stored a table.
pub(super) const INT8_ROWS: &str =
    "; embedding tables (Gather): 8-bit rows, dequantized after the lookup";

/// Whether every user of a table looks up rows (axis 0, or -2 of the [V, D] table); else the
/// table stays float, said in `skipped` (`form`: what row lookups have, for the reason).
pub(super) fn rows_only(
    g: &pb::GraphProto,
    w: &Weight,
    form: &str,
    skipped: &mut Vec<Skipped>,
) -> bool {
    for &(ni, _) in &w.users {
        let n = &g.node[ni];
        let axis = onnx::get_attr_int(n, "axis", 0);
        if axis != 0 && axis != -2 {
            skipped.push(Skipped {
                node: node_label(n, ni),
                reason: format!(
                    "Gather with axis={axis} is left in float: only row lookups (axis 0, embeddings) {form}"
                ),
            });
            return false;
        }
    }
    true
}

/// An int8 table as stored: the names of its values, scales and zero points (the values, and
/// the zero points per tensor, are written already), and its scales.
pub(super) struct Int8Table<'a> {
    pub q: &'a str,
    pub scale: &'a str,
    pub zero_point: &'a str,
    pub scales: &'a [f32],
    /// One scale per row (else one for the table).
    pub per_row: bool,
}

/// Writes the scales of an int8 table and, for each lookup, the int8 lookup and the
/// dequantization of the rows it read.
pub(super) fn write_int8(rw: &mut Rewrite, g: &pb::GraphProto, w: &Weight, q: &Int8Table) {
    if q.per_row {
        // [V, 1]: gathered with the ids it becomes ids.shape + [1].
        rw.new_inits
            .push(f32_tensor(q.scale, &[q.scales.len() as i64, 1], q.scales));
    } else {
        rw.new_inits.push(f32_tensor(q.scale, &[], q.scales));
    }
    for &(ni, _) in &w.users {
        let node = &g.node[ni];
        let base = node_label(node, ni);
        let ids = node.input[1].clone();
        let y = node.output[0].clone();
        let gq = rw.fresh(&format!("{y}_quantized"));
        let mut nodes = vec![onnx::node(
            "Gather",
            rw.fresh(&format!("{base}_quantized")),
            vec![q.q.to_string(), ids.clone()],
            vec![gq.clone()],
            vec![attr_int("axis", 0)],
        )];
        if q.per_row {
            nodes.extend(scaled_rows(rw, &base, &y, gq, q.scale, ids));
        } else {
            nodes.push(onnx::node(
                "DequantizeLinear",
                rw.fresh(&format!("{base}_DequantizeLinear")),
                vec![gq, q.scale.to_string(), q.zero_point.to_string()],
                vec![y],
                vec![],
            ));
        }
        rw.replace.insert(ni, nodes);
    }
}

/// Per-row scales: the int8 rows `gq` cast to float and multiplied by their gathered scales
/// into `y`.
fn scaled_rows(
    rw: &mut Rewrite,
    base: &str,
    y: &str,
    gq: String,
    scales: &str,
    ids: String,
) -> Vec<pb::NodeProto> {
    let cast = rw.fresh(&format!("{y}_cast"));
    let gs = rw.fresh(&format!("{y}_scales"));
    vec![
        onnx::cast_to_float(rw.fresh(&format!("{base}_cast")), gq, cast.clone()),
        onnx::node(
            "Gather",
            rw.fresh(&format!("{base}_scales")),
            vec![scales.to_string(), ids],
            vec![gs.clone()],
            vec![attr_int("axis", 0)],
        ),
        onnx::node(
            "Mul",
            rw.fresh(&format!("{base}_scales_mul")),
            vec![cast, gs],
            vec![y.to_string()],
            vec![],
        ),
    ]
}

/// The 4-bit lookup of table `q` (blocks of `block_size` along each row), with its scales
/// and, when asymmetric, zero points.
pub(super) fn block_quantized(
    rw: &mut Rewrite,
    node: &pb::NodeProto,
    base: &str,
    q: &str,
    scales: &str,
    zero_points: Option<&String>,
    block_size: usize,
) -> pb::NodeProto {
    let mut inputs = vec![q.to_string(), node.input[1].clone(), scales.to_string()];
    inputs.extend(zero_points.cloned());
    super::ms::node(
        "GatherBlockQuantized",
        rw.fresh(&format!("{base}_q4")),
        inputs,
        vec![node.output[0].clone()],
        vec![
            attr_int("bits", 4),
            attr_int("block_size", block_size as i64),
            attr_int("gather_axis", 0),
            attr_int("quantize_axis", 1),
        ],
    )
}
