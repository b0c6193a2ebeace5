//! Weights held in `Constant` nodes (several exporters, e.g. paddle2onnx, write them so) are
//! weights too: folded into initializers, losslessly, so passes find them. An `Identity` of an
//! initializer is folded the same way (its consumers read the initializer directly).

use super::pb;
use std::collections::{HashMap, HashSet};

/// What folding did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// `Constant` nodes turned into initializers.
    pub constants: usize,
    /// `Identity` nodes of initializers removed.
    pub identities: usize,
}

/// Folds the top-level graph's `Constant` nodes that hold a tensor (`value`) into
/// initializers named after their output, and removes `Identity` nodes whose input is an
/// initializer. A value that is a graph output, or consumed inside a subgraph by name, keeps
/// its node (renaming it would change the graph's interface).
pub fn fold_constants(graph: &mut pb::GraphProto) -> Folded {
    let mut folded = Folded::default();
    let outputs: HashSet<String> = graph.output.iter().filter_map(|v| v.name.clone()).collect();
    let in_subgraphs = subgraph_inputs(graph);
    let keep = |name: &str| outputs.contains(name) || in_subgraphs.contains(name);
    let mut nodes = Vec::with_capacity(graph.node.len());
    for mut node in std::mem::take(&mut graph.node) {
        let op = node.op_type.as_deref().unwrap_or("");
        let domain_ok = node
            .domain
            .as_deref()
            .is_none_or(|d| d.is_empty() || d == "ai.onnx");
        if domain_ok && op == "Constant" && node.output.len() == 1 && !keep(&node.output[0]) {
            let value = node
                .attribute
                .iter_mut()
                .find(|a| a.name.as_deref() == Some("value"))
                .and_then(|a| a.t.take());
            if let Some(mut t) = value {
                t.name = Some(node.output[0].clone());
                graph.initializer.push(t);
                folded.constants += 1;
                continue;
            }
        }
        nodes.push(node);
    }
    graph.node = nodes;

    // Identity(initializer) -> the initializer, for every consumer of the Identity's output.
    let inits: HashSet<String> = graph
        .initializer
        .iter()
        .filter_map(|t| t.name.clone())
        .collect();
    let mut alias: HashMap<String, String> = HashMap::new();
    graph.node.retain(|n| {
        let fold = n.op_type.as_deref() == Some("Identity")
            && n.domain
                .as_deref()
                .is_none_or(|d| d.is_empty() || d == "ai.onnx")
            && n.input.len() == 1
            && n.output.len() == 1
            && inits.contains(&n.input[0])
            && !keep(&n.output[0]);
        if fold {
            alias.insert(n.output[0].clone(), n.input[0].clone());
        }
        !fold
    });
    folded.identities = alias.len();
    if !alias.is_empty() {
        for n in &mut graph.node {
            for i in &mut n.input {
                if let Some(to) = alias.get(i) {
                    *i = to.clone();
                }
            }
        }
    }
    folded
}

/// Names read inside subgraphs (If/Loop/Scan bodies) that they do not define themselves.
fn subgraph_inputs(graph: &pb::GraphProto) -> HashSet<String> {
    let mut names = HashSet::new();
    for n in &graph.node {
        for a in &n.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                collect_reads(g, &mut names);
            }
        }
    }
    names
}

fn collect_reads(g: &pb::GraphProto, names: &mut HashSet<String>) {
    for n in &g.node {
        names.extend(n.input.iter().cloned());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                collect_reads(sub, names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{f32_tensor, node};

    fn constant(out: &str, t: pb::TensorProto) -> pb::NodeProto {
        let mut n = node(
            "Constant",
            format!("c_{out}"),
            vec![],
            vec![out.into()],
            vec![],
        );
        n.attribute.push(pb::AttributeProto {
            name: Some("value".into()),
            r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
            t: Some(t),
            ..Default::default()
        });
        n
    }

    fn graph() -> pb::GraphProto {
        let w = f32_tensor("ignored", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        pb::GraphProto {
            node: vec![
                constant("W", w.clone()),
                node(
                    "Identity",
                    "id".into(),
                    vec!["W".into()],
                    vec!["W2".into()],
                    vec![],
                ),
                node(
                    "MatMul",
                    "mm".into(),
                    vec!["x".into(), "W2".into()],
                    vec!["y".into()],
                    vec![],
                ),
                constant("out_const", w),
            ],
            output: vec![pb::ValueInfoProto {
                name: Some("out_const".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn constants_become_initializers_and_identities_of_them_disappear() {
        let mut g = graph();
        let f = fold_constants(&mut g);
        assert_eq!(
            f,
            Folded {
                constants: 1,
                identities: 1
            }
        );
        assert_eq!(g.initializer.len(), 1);
        assert_eq!(g.initializer[0].name.as_deref(), Some("W"));
        assert_eq!(
            g.initializer[0].raw_data.as_deref().map(<[u8]>::len),
            Some(16),
            "the payload moves as it is"
        );
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(
            ops,
            ["MatMul", "Constant"],
            "a graph output keeps its Constant"
        );
        assert_eq!(g.node[0].input, ["x", "W"]);
    }

    #[test]
    fn folding_twice_changes_nothing_more() {
        let mut g = graph();
        fold_constants(&mut g);
        let once = g.clone();
        assert_eq!(fold_constants(&mut g), Folded::default());
        assert_eq!(g, once);
    }
}
