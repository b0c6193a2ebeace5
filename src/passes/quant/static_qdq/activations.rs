//! The activation side of the static form: scale and zero point of a calibrated range, the
//! `QuantizeLinear -> DequantizeLinear` pair that quantizes a tensor, and the integer region
//! around the Convs ([`qdq_chain`]) quantized at its producers.

use super::Qdq;
use crate::onnx::{self, DataType, f32_tensor, int8_tensor, pb, raw_tensor};
use crate::passes::Result;
use crate::passes::qdq_chain::{Chain, ChainTensor};
use std::collections::HashSet;

/// Scale and zero point of an activation range (ONNX Runtime's rule): asymmetric widens
/// `[lo, hi]` to hold 0 and maps it onto the whole type; symmetric maps `[-m, m]`,
/// `m = max(|lo|, |hi|)`, onto [-127, 127] (int8, zero point 0) or [0, 255] (uint8, zero
/// point 128). An empty range gets scale 1.
pub fn activation_qparams(lo: f32, hi: f32, uint8: bool, symmetric: bool) -> (f32, i32) {
    let (qmin, qmax) = match (uint8, symmetric) {
        (true, _) => (0i32, 255i32),
        (false, true) => (-127, 127),
        (false, false) => (-128, 127),
    };
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if symmetric {
        let m = lo.abs().max(hi.abs());
        let scale = 2.0 * m / (qmax - qmin) as f32;
        let zp = if uint8 { 128 } else { 0 };
        return if scale > 0.0 && scale.is_normal() {
            (scale, zp)
        } else {
            (1.0, zp)
        };
    }
    let scale = (hi - lo) / (qmax - qmin) as f32;
    if !(scale > 0.0 && scale.is_normal()) {
        return (1.0, 0);
    }
    let zp = (qmin as f32 - lo / scale).round() as i32;
    (scale, zp.clamp(qmin, qmax))
}

impl Qdq<'_> {
    /// `Q -> DQ` on tensor `t` at the range calibrated for `range_of`, whose float values
    /// come from `src`; the DQ writes `out`. Returns the scale and the two nodes.
    pub(super) fn pair_at(
        &mut self,
        t: &str,
        range_of: &str,
        src: &str,
        out: &str,
    ) -> (f32, Vec<pb::NodeProto>) {
        let (lo, hi) = self.ranges[range_of];
        let (scale, zp) = activation_qparams(lo, hi, self.a.uint8, self.a.symmetric);
        let rw = &mut self.rw;
        let s = rw.fresh(&format!("{t}_scale"));
        let z = rw.fresh(&format!("{t}_zero_point"));
        let q = rw.fresh(&format!("{t}_quantized"));
        rw.new_inits.push(f32_tensor(&s, &[], &[scale]));
        rw.new_inits.push(zero_point(&z, zp, self.a.uint8));
        let nodes = vec![
            onnx::node(
                "QuantizeLinear",
                rw.fresh(&format!("{t}_QuantizeLinear")),
                vec![src.to_string(), s.clone(), z.clone()],
                vec![q.clone()],
                vec![],
            ),
            onnx::node(
                "DequantizeLinear",
                rw.fresh(&format!("{t}_DequantizeLinear")),
                vec![q, s, z],
                vec![out.to_string()],
                vec![],
            ),
        ];
        (scale, nodes)
    }

    /// The integer region around the Convs, quantized first: its tensors at their
    /// producers (the Convs read them), its rescaling Mul/Div folded into dequantizers, its
    /// scalar constants quantized over their own value. Marks the nodes the region drops.
    pub(super) fn quantize_region(&mut self, chain: &Chain) -> Result<()> {
        // The Mul/Div nodes folded into dequantizers: a tensor only they read needs no DQ of
        // its own (its int8 values are read at their scales instead).
        let rescaled: HashSet<usize> = chain
            .tensors
            .iter()
            .filter(|t| t.rescale_of.is_some())
            .filter_map(|t| t.producer)
            .collect();
        for t in &chain.tensors {
            if let Some((x, factor)) = &t.rescale_of {
                self.rescale(t, x, *factor, &rescaled);
                continue;
            }
            if let Some((ni, slot)) = t.constant_for {
                let read = self.constant_pair(&t.name)?;
                self.rw.input_renames.push((ni, slot, read));
                continue;
            }
            if !self.ranges.contains_key(&t.range_of) {
                continue;
            }
            let act = match t.producer {
                Some(p) => self.quantize_at_producer(t, p, &rescaled),
                None => self.quantize_input(t),
            };
            self.acts.insert(t.name.clone(), act);
        }
        let g = self.g;
        let acts = &self.acts;
        self.rw.removed.extend(
            chain
                .removed
                .iter()
                .copied()
                .filter(|r| acts.contains_key(&g.node[*r].output[0])),
        );
        Ok(())
    }

    /// Whether only the folded Mul/Div nodes read tensor `name`.
    fn only_rescaled(&self, name: &str, rescaled: &HashSet<usize>) -> bool {
        !self.graph_outputs.contains(name)
            && self
                .consumers
                .get(name)
                .is_some_and(|c| c.iter().all(|(ni, _)| rescaled.contains(ni)))
    }

    /// A Mul/Div by a positive scalar: dequantized from its input's int8 values at the
    /// scaled scale, in place of the node (which goes).
    fn rescale(&mut self, t: &ChainTensor, x: &str, factor: f32, rescaled: &HashSet<usize>) {
        let Some(src) = self.acts.get(x).cloned() else {
            return;
        };
        let ni = t.producer.expect("a rescaled tensor has its node");
        let scale = src.scale * factor;
        if !self.only_rescaled(&t.name, rescaled) {
            let rw = &mut self.rw;
            let s = rw.fresh(&format!("{}_scale", t.name));
            rw.new_inits.push(f32_tensor(&s, &[], &[scale]));
            let dq = onnx::node(
                "DequantizeLinear",
                rw.fresh(&format!("{}_DequantizeLinear", t.name)),
                vec![src.q.clone(), s, src.zero_point.clone()],
                vec![t.name.clone()],
                vec![],
            );
            rw.before.entry(ni).or_default().push(dq);
        }
        self.acts.insert(
            t.name.clone(),
            Act {
                scale,
                read: t.name.clone(),
                ..src
            },
        );
    }

    /// A tensor of the region quantized right after its producer `p` (which then writes
    /// `<name>_float` when the pair keeps the tensor's name); a tensor only folded Mul/Div
    /// read keeps just the Q.
    fn quantize_at_producer(
        &mut self,
        t: &ChainTensor,
        p: usize,
        rescaled: &HashSet<usize>,
    ) -> Act {
        let src = if t.source == t.name {
            let pre = self.rw.fresh(&format!("{}_float", t.name));
            self.rw.output_renames.push((p, t.slot, pre.clone()));
            pre
        } else {
            t.source.clone()
        };
        let (scale, nodes) = self.pair_at(&t.name, &t.range_of, &src, &t.name);
        let act = Act::of(scale, t.name.clone(), &nodes);
        let keep = if self.only_rescaled(&t.name, rescaled) {
            1
        } else {
            2
        };
        self.rw
            .after
            .entry(p)
            .or_default()
            .extend(nodes.into_iter().take(keep));
        act
    }

    /// A graph input of the region, quantized in front of the graph; its readers read the DQ.
    fn quantize_input(&mut self, t: &ChainTensor) -> Act {
        let read = self.rw.fresh(&format!("{}_dequantized", t.name));
        let (scale, nodes) = self.pair_at(&t.name, &t.range_of, &t.name, &read);
        let act = Act::of(scale, read.clone(), &nodes);
        self.rw.before.entry(0).or_default().extend(nodes);
        for &(ni, slot) in self.consumers.get(t.name.as_str()).into_iter().flatten() {
            self.rw.input_renames.push((ni, slot, read.clone()));
        }
        act
    }

    /// A scalar constant quantized over its own value (exactly: it is an end of its range)
    /// and dequantized in front of the graph; returns the name its reader reads.
    fn constant_pair(&mut self, name: &str) -> Result<String> {
        let a = self.a;
        let t = self
            .g
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .expect("the chain plans initializers only");
        let v = onnx::tensor_f32_values(t)?[0];
        let (scale, zp) = activation_qparams(v.min(0.0), v.max(0.0), a.uint8, a.symmetric);
        let q = ((v / scale).round() as i32 + zp).clamp(
            if a.uint8 { 0 } else { -128 },
            if a.uint8 { 255 } else { 127 },
        );
        let rw = &mut self.rw;
        let (qn, sn, zn, dn) = (
            rw.fresh(&format!("{name}_quantized")),
            rw.fresh(&format!("{name}_scale")),
            rw.fresh(&format!("{name}_zero_point")),
            rw.fresh(&format!("{name}_dequantized")),
        );
        let dims = t.dims.clone();
        rw.new_inits.push(if a.uint8 {
            raw_tensor(&qn, &dims, DataType::Uint8, vec![q as u8])
        } else {
            int8_tensor(&qn, &dims, vec![q as i8])
        });
        rw.new_inits.push(f32_tensor(&sn, &[], &[scale]));
        rw.new_inits.push(zero_point(&zn, zp, a.uint8));
        let dq = onnx::node(
            "DequantizeLinear",
            rw.fresh(&format!("{name}_DequantizeLinear")),
            vec![qn, sn, zn],
            vec![dn.clone()],
            vec![],
        );
        rw.before.entry(0).or_default().push(dq);
        Ok(dn)
    }
}

/// One quantized activation: its scale, the name quantized consumers read, and the int8
/// tensor and zero point its dequantizer reads.
#[derive(Clone)]
pub(super) struct Act {
    pub scale: f32,
    pub read: String,
    pub q: String,
    pub zero_point: String,
}

impl Act {
    /// From the `Q -> DQ` pair that quantizes it.
    pub(super) fn of(scale: f32, read: String, pair: &[pb::NodeProto]) -> Act {
        let dq = &pair[1].input;
        Act {
            scale,
            read,
            q: dq[0].clone(),
            zero_point: dq[2].clone(),
        }
    }
}

/// A scalar zero point of the activation type.
fn zero_point(name: &str, zp: i32, uint8: bool) -> pb::TensorProto {
    if uint8 {
        raw_tensor(name, &[], DataType::Uint8, vec![zp as u8])
    } else {
        int8_tensor(name, &[], vec![zp as i8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_qparams_follow_onnx_runtime() {
        // asymmetric int8 over [0, 2.55]: the whole [-128, 127]
        let (s, z) = activation_qparams(0.0, 2.55, false, false);
        assert!((s - 0.01).abs() < 1e-7 && z == -128, "{s} {z}");
        // asymmetric uint8 over [-1, 1]
        let (s, z) = activation_qparams(-1.0, 1.0, true, false);
        // (0 - (-1)/scale is 127.5 up to float rounding)
        assert!(
            (s - 2.0 / 255.0).abs() < 1e-7 && (127..=128).contains(&z),
            "{s} {z}"
        );
        // symmetric int8: [-127, 127], zero point 0
        let (s, z) = activation_qparams(-0.5, 1.27, false, true);
        assert!((s - 0.01).abs() < 1e-7 && z == 0, "{s} {z}");
        // symmetric uint8: zero point 128
        assert_eq!(activation_qparams(-1.0, 1.0, true, true).1, 128);
        // a range not holding 0 is widened to hold it
        let (s, z) = activation_qparams(1.0, 2.0, false, false);
        assert!((s - 2.0 / 255.0).abs() < 1e-7 && z == -128, "{s} {z}");
        // empty range
        assert_eq!(activation_qparams(0.0, 0.0, false, false), (1.0, 0));
    }
}
